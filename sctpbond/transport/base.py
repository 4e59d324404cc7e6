"""What every transport provides: a Channel carries whole frames over one path; a Listener accepts Channels.

Transports move bytes and report socket trouble as TransportError; they never decide protocol matters (that is
the sans-IO core's job), so TCP and SCTP plug into the same runtime unchanged.
"""

from __future__ import annotations

import abc
import errno
import socket
import struct
from collections.abc import Sequence

from ..errors import AddressInUseError, ConnectError, TransportError, UsageError
from ..proto.frames import SESSION, Expect

Buffer = bytes | bytearray | memoryview


class Channel(abc.ABC):
    """One connected socket of one path. send/recv are blocking and may be used from two threads at once."""

    transport: str = "?"
    local: tuple[str, int] = ("", 0)
    remote: tuple[str, int] = ("", 0)
    # The largest frame this transport takes without stalling (None: no limit). SCTP takes a message into its
    # send buffer only whole, so its frames must stay a fraction of the buffer the kernel really gave.
    max_frame: int | None = None

    @property
    def label(self) -> str:
        return f"{self.local[0]}->{self.remote[0]}:{self.remote[1]}"

    @abc.abstractmethod
    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        """Send exactly one frame made of `parts` (header, body...); `data` marks a DATA frame (SCTP stripes
        those over its data streams and keeps control frames on stream 0)."""

    @abc.abstractmethod
    def recv(self, expect: Expect = SESSION) -> memoryview | None:
        """Receive exactly one whole frame of a type in `expect` (checked from its header, before the body is read
        or allocated); None on an orderly end of stream at a frame boundary. RemoteProtocolError for a frame of
        another type or length; TransportError for socket trouble, an end of stream inside a frame included."""

    @abc.abstractmethod
    def shutdown_write(self) -> None:
        """No more frames from us (the peer reads EOF after the last one)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Tear the path down now; wakes any thread blocked in send/recv."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def set_timeout(self, seconds: float | None) -> None:  # noqa: B027 (a default: fakes have nothing to bound)
        """Bound blocking calls (None: block forever): handshakes are bounded, data threads block freely."""

    def order_until_heard(self) -> None:  # noqa: B027 (a default: a byte stream is always in order)
        """Just after READY: keep every frame in order behind it until a frame from the peer arrives (SCTP's
        unordered data streams could otherwise overtake READY)."""

    def set_send_stall(self, seconds: float) -> None:  # noqa: B027 (a default: fakes never stall)
        """After the handshake: a send that gets no byte accepted by the peer for `seconds` fails with
        TransportError (a peer that never reads must not hold our sender, and its queue, for ever). A send
        that makes progress, however slowly, is never cut."""

    def info(self) -> dict:
        """Transport-level details for --stats-json (SCTP: state, srtt, cwnd, rto)."""
        return {}

    def rtt(self) -> float | None:
        """The transport's own smoothed round-trip time to the peer, in seconds, or None if unknown. Unlike a
        PING answered through our frames, it excludes whatever waits in our socket's send queue."""
        return None


class ChannelWrapper(Channel):
    """A channel around another one (sealing, test hooks): forwards everything; subclasses override send/recv."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.transport, self.local, self.remote = inner.transport, inner.local, inner.remote
        self.max_frame = inner.max_frame

    @property
    def label(self) -> str:
        return self.inner.label

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        self.inner.send(parts, data)

    def recv(self, expect: Expect = SESSION) -> memoryview | None:
        return self.inner.recv(expect)

    def shutdown_write(self) -> None:
        self.inner.shutdown_write()

    def abort(self) -> None:
        self.inner.abort()

    def close(self) -> None:
        self.inner.close()

    def set_timeout(self, seconds: float | None) -> None:
        self.inner.set_timeout(seconds)

    def set_send_stall(self, seconds: float) -> None:
        self.inner.set_send_stall(seconds)

    def order_until_heard(self) -> None:
        self.inner.order_until_heard()

    def info(self) -> dict:
        return self.inner.info()

    def rtt(self) -> float | None:
        return self.inner.rtt()


class SocketChannel(Channel):
    """A channel over one connected socket `self.sock` (TCP, or the stdlib side of an SCTP association)."""

    sock: socket.socket
    send_stall = 0.0  # seconds without progress after which a send fails (set_send_stall)

    def set_timeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def set_send_stall(self, seconds: float) -> None:
        # SO_SNDTIMEO bounds each blocking send's wait for buffer space: a send that moved no byte in that time
        # returns EAGAIN (send_all then gives up), one that moved some returns its count and goes on.
        self.send_stall = seconds
        usec = max(1, int(seconds * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", usec // 1_000_000,
                                                                               usec % 1_000_000))

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


class Listener(abc.ABC):
    transport: str = "?"

    @abc.abstractmethod
    def accept(self, timeout: float | None) -> Channel | None:
        """The next incoming connection, or None when `timeout` passes."""

    @abc.abstractmethod
    def addresses(self) -> list[tuple[str, int]]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


def connect_error(exc: OSError, remote: tuple[str, int], local: str | None, timeout: float) -> Exception:
    """Turn a failed connect into a one-line, actionable error."""
    where = f"{remote[0]}:{remote[1]}" + (f" from {local}" if local else "")
    if isinstance(exc, TimeoutError):
        return ConnectError(f"no answer from {where} within {timeout:g} s")
    code = exc.errno
    if code == errno.ECONNREFUSED:
        return ConnectError(f"connection refused by {where} (is `sctpbond listen` running there?)")
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN):
        return ConnectError(f"cannot reach {where}: {exc.strerror}")
    if code == errno.EADDRNOTAVAIL and local:
        return UsageError(f"local address {local} is not an address of this host")
    return ConnectError(f"cannot connect to {where}: {exc.strerror or exc}")


def bind_error(exc: OSError, addr: str, port: int) -> Exception:
    if exc.errno == errno.EADDRINUSE:
        return AddressInUseError(f"port {port} is already in use on {addr or '*'} (another listener?)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"cannot listen on {addr}: not an address of this host")
    if exc.errno == errno.EACCES:
        return UsageError(f"not allowed to listen on port {port} (ports below 1024 need root)")
    return TransportError(f"cannot listen on {addr or '*'}:{port}: {exc.strerror or exc}")

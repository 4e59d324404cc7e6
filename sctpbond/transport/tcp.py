"""TCP transport: one TCP connection per path (or K per path with --multiplier), frames back to back.

The fallback where the kernel has no SCTP, and the way to spread over a LAG whose hash pins each connection to
one member. Frames are read as header then body, straight into one buffer (no re-copy of payloads).
"""

from __future__ import annotations

import selectors
import socket
import struct
from collections.abc import Sequence

from ..errors import TransportError
from ..proto.frames import HEADER_SIZE, SESSION, Expect, parse_header
from .base import Buffer, Listener, SocketChannel, bind_error, connect_error

_TCPI_RTT = struct.Struct("=I")  # struct tcp_info: tcpi_rtt (microseconds) after 8 bytes of flags and 15 u32s
_TCPI_RTT_OFFSET = 8 + 15 * 4


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class TcpChannel(SocketChannel):
    transport = "tcp"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local = sock.getsockname()[:2]
        self.remote = sock.getpeername()[:2]
        self._header = bytearray(HEADER_SIZE)

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        try:
            total = sum(len(p) for p in parts)
            sent = self.sock.sendmsg(parts)
            while sent < total:  # the send stall timer or a signal cut it short: finish the frame byte-exact
                parts, total = _after(parts, sent), total - sent
                sent = self.sock.sendmsg(parts)
        except BlockingIOError:
            raise TransportError(f"{self.label}: the peer accepted no data for {self.send_stall:g} s") from None
        except OSError as exc:
            raise TransportError(f"send on {self.label} failed: {exc.strerror or exc}") from None


    def rtt(self) -> float | None:
        try:
            raw = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_RTT_OFFSET + _TCPI_RTT.size)
        except (OSError, AttributeError):  # closed, or no TCP_INFO (not Linux)
            return None
        if len(raw) < _TCPI_RTT_OFFSET + _TCPI_RTT.size:
            return None
        usec = _TCPI_RTT.unpack_from(raw, _TCPI_RTT_OFFSET)[0]
        return usec / 1e6 if usec else None

    def _recv_exact(self, view: memoryview) -> bool:
        """Fill `view`; False if the stream ended before the first byte. An end inside it is transport trouble
        (the path fails and is re-dialled), like every other end of a connection that is not at a boundary."""
        got = 0
        while got < len(view):
            try:
                n = self.sock.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
            except OSError as exc:
                raise TransportError(f"receive on {self.label} failed: {exc.strerror or exc}") from None
            if n == 0:
                if got == 0:
                    return False
                raise TransportError(f"{self.label} closed in the middle of a frame")
            got += n
        return True

    def recv(self, expect: Expect = SESSION) -> memoryview | None:
        header = memoryview(self._header)
        if not self._recv_exact(header):
            return None
        _, length = parse_header(header, expect)  # before the body is allocated
        buf = bytearray(HEADER_SIZE + length)
        buf[:HEADER_SIZE] = header
        view = memoryview(buf)
        if length and not self._recv_exact(view[HEADER_SIZE:]):
            raise TransportError(f"{self.label} closed in the middle of a frame")
        return view


def _after(parts: Sequence[Buffer], sent: int) -> list[Buffer]:
    """What is left of `parts` once `sent` bytes of them went out (views, no copies)."""
    rest: list[Buffer] = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        rest.append(memoryview(part)[sent:] if sent else part)
        sent = 0
    return rest


def connect(remote: tuple[str, int], local: str | None = None, timeout: float = 5.0,
            pinned: bool = False) -> TcpChannel:
    """One connection to `remote`, from `local` if given (TCP always leaves from the address it is bound to, so
    `pinned` changes nothing here)."""
    host, port = remote
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        if local:
            sock.bind((local, 0))
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.settimeout(None)
        return TcpChannel(sock)
    except OSError as exc:
        sock.close()
        raise connect_error(exc, remote, local, timeout) from None


class TcpListener(Listener):
    transport = "tcp"

    def __init__(self, binds: Sequence[str], port: int, backlog: int = 128) -> None:
        self._socks: list[socket.socket] = []
        self._sel = selectors.DefaultSelector()
        try:
            for addr in binds:
                sock = socket.socket(_family(addr), socket.SOCK_STREAM)
                self._socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if sock.family == socket.AF_INET6 and addr in ("::", ""):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                try:
                    sock.bind((addr, port))
                except OSError as exc:
                    raise bind_error(exc, addr, port) from None
                sock.listen(backlog)
                sock.setblocking(False)
                self._sel.register(sock, selectors.EVENT_READ)
        except BaseException:
            self.close()
            raise

    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self._socks]

    def accept(self, timeout: float | None) -> TcpChannel | None:
        for key, _ in self._sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            conn.setblocking(True)
            try:
                return TcpChannel(conn)
            except OSError:  # peer already gone (e.g. a port scan)
                conn.close()
        return None

    def close(self) -> None:
        self._sel.close()
        for sock in self._socks:
            sock.close()


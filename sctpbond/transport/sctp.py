"""Kernel SCTP transport: one multi-homed, multi-stream association per path.

Linux SCTP has no concurrent multipath: an association sends new data only on its primary path and keeps the
other addresses for failover. So every path gets its own association, bound to every local address so the kernel
can move it to another link if its own dies (or only to the local address the user pinned the path to), with its
primary set to the path's remote address so that in normal operation each link carries its own association.
Striping across associations is done above, by the sans-IO core.

Everything goes through the standard socket module (the RFC 6458 options in sctp_api.py): `sendmsg` with an
SCTP_SNDINFO ancillary record picks the stream (control frames on stream 0, DATA striped over the others)
without copying the payload, and `recvmsg` with SCTP_RECVRCVINFO enabled reports the stream each message really
arrived on. One frame is one SCTP message, received straight into its own buffer (the frame header is peeked
first for its length), so no byte is copied in user space.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence

from ..errors import ConnectError, RemoteProtocolError, TransportError, UsageError
from ..host import IPPROTO_SCTP
from ..proto.frames import HEADER_SIZE, SESSION, Expect, parse_header
from . import sctp_api as api
from .base import Buffer, Listener, SocketChannel, bind_error, connect_error

LOG = logging.getLogger("sctpbond")

SCTP_SNDINFO = 2  # cmsg types
SCTP_RCVINFO = 3
SCTP_UNORDERED = 1
MSG_NOTIFICATION = 0x8000
SNDINFO = struct.Struct("=HHIIi")  # sid, flags, ppid, context, assoc_id
RCVINFO = struct.Struct("=HHHxxIIIIi")  # sid, ssn, flags, ppid, tsn, cumtsn, context, assoc_id
NOTIF_HEAD = struct.Struct("=HHI")  # sn_type, sn_flags, sn_length
MAX_NOTIFICATION = 4096  # our own kernel's notifications are a few hundred bytes

# RFC 6458 notification types (Linux values)
ASSOC_CHANGE, PEER_ADDR_CHANGE, SEND_FAILED, REMOTE_ERROR, SHUTDOWN_EVENT = 0x8001, 0x8002, 0x8003, 0x8004, 0x8005
SEND_FAILED_EVENT = 0x800D
_SUBSCRIBE = (ASSOC_CHANGE, PEER_ADDR_CHANGE, SEND_FAILED_EVENT, REMOTE_ERROR, SHUTDOWN_EVENT)
_ADDR_STATES = {0: "available", 1: "unreachable", 2: "removed", 3: "added", 4: "made-primary", 5: "confirmed",
                6: "potentially-failed"}
_ASSOC_STATES = {0: "comm-up", 1: "comm-lost", 2: "restart", 3: "shutdown-complete", 4: "cant-start"}

DEFAULT_STREAMS = 8
_SOCKBUF = 8 << 20  # asked for; what the kernel gives is read back (net.core.wmem_max caps it without CAP_NET_ADMIN)
# A message enters the send buffer whole, and the kernel counts each DATA chunk's packet overhead against the
# buffer too: frames of at most a quarter of it keep two or three in the buffer while one is on the wire.
FRAME_SHARE = 4
# Timers (docs/sctp-notes.md section 8). Failover inside an association must beat our own silence detection
# (--dead-after, 1 s by default): heartbeat every 200 ms, an address is given up after 2 retransmissions, and
# "potentially failed" (RFC 7829: data moves to another address) only after the second timeout in a row, so one
# late SACK cannot move the association off its link. The RTO floor of 200 ms stays above our peer's delayed
# SACK (10 ms, below the kernel's 200 ms default, which a lone packet at the end of a quota-paced burst waits
# for); the ceiling of 5 s stays above a loaded satellite or cellular RTT (RFC 9260 section 6.3.1 recommends
# 1 s..60 s; a 1 s floor would make in-association failover slower than our own path failover).
HB_INTERVAL_MS, PATH_MAX_RXT, PF_THRESHOLD = 200, 2, 1
RTO_INITIAL_MS, RTO_MIN_MS, RTO_MAX_MS = 500, 200, 5000
SACK_DELAY_MS, SACK_FREQ = 10, 2
SCTP_MIN_STALL = 5.0  # seconds: see SctpChannel.set_send_stall
SEND_SLICE = 0.1  # seconds a blocked send waits before it looks at abort() again

_limit_noted = threading.Event()


def local_addresses(include_loopback: bool = False) -> list[str]:
    return api.host_addresses(socket.AF_INET, include_loopback)


def _buffer_notice(snd: int, rcv: int) -> None:
    """Once per process, when net.core.wmem_max/rmem_max (not CAP_NET_ADMIN) cut the buffers."""
    if _limit_noted.is_set():
        return
    _limit_noted.set()
    LOG.warning(f"notice: SCTP buffers limited by net.core.wmem_max/rmem_max to {snd // 1024}/{rcv // 1024} KiB, "
                f"so frames are at most {snd // FRAME_SHARE // 1024} KiB; lift it with "
                f"`sysctl -w net.core.wmem_max={_SOCKBUF} net.core.rmem_max={_SOCKBUF}` (see `sctpbond doctor`)")


def _tune(sock: socket.socket, streams: int) -> int:
    """Options set before the association exists (inherited by accepted sockets); the real send buffer size."""
    sock.setsockopt(api.SOL_SCTP, api.SCTP_INITMSG, api.INITMSG.pack(streams, streams, 0, 0))
    sock.setsockopt(api.SOL_SCTP, api.SCTP_NODELAY, 1)
    sock.setsockopt(api.SOL_SCTP, api.SCTP_RECVRCVINFO, 1)
    sock.setsockopt(api.SOL_SCTP, api.SCTP_RTOINFO, api.RTOINFO.pack(0, RTO_INITIAL_MS, RTO_MAX_MS, RTO_MIN_MS))
    for kind in _SUBSCRIBE:
        try:
            sock.setsockopt(api.SOL_SCTP, api.SCTP_EVENT, api.EVENT.pack(0, kind, 1))
        except OSError:
            pass  # an older kernel without this event: we only lose a log line
    snd, rcv, capped = api.set_buffers(sock, _SOCKBUF)
    if capped:
        _buffer_notice(snd, rcv)
    return snd


def _tune_paths(sock: socket.socket) -> None:
    """Per-association settings, for every peer address at once (a zero address): heartbeat interval and
    retransmission limit (with SPP_HB_ENABLE, or the kernel ignores the interval), the potentially-failed
    threshold, and the delay of our SACKs. Best effort: the defaults still work, only slower."""
    settings = ((api.SCTP_PEER_ADDR_PARAMS,
                 api.PADDRPARAMS.pack(0, bytes(128), HB_INTERVAL_MS, PATH_MAX_RXT, 0, 0, api.SPP_HB_ENABLE, 0, 0)),
                (api.SCTP_PEER_ADDR_THLDS, api.PADDRTHLDS.pack(0, bytes(128), PATH_MAX_RXT, PF_THRESHOLD)),
                (api.SCTP_DELAYED_SACK, api.SACKINFO.pack(0, SACK_DELAY_MS, SACK_FREQ)))
    for option, value in settings:
        try:
            sock.setsockopt(api.SOL_SCTP, option, value)
        except OSError:
            pass


class SctpChannel(SocketChannel):
    transport = "sctp"

    def __init__(self, sock: socket.socket, sndbuf: int | None = None, unordered: bool = True) -> None:
        self.sock = sock
        self.local = api.plain(sock.getsockname())
        self.remote = api.plain(sock.getpeername())
        status = api.assoc_status(sock.fileno())
        self.out_streams = max(1, status.out_streams)
        self.in_streams = status.in_streams
        self._data_streams = itertools.cycle(range(1, self.out_streams) if self.out_streams > 1 else [0])
        self._flags = SCTP_UNORDERED if unordered else 0
        self._cmsg = socket.CMSG_SPACE(RCVINFO.size)
        self.sndbuf = sndbuf or sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.max_frame = self.sndbuf // FRAME_SHARE
        self.streams_seen: Counter[int] = Counter()
        self.events: list[str] = []
        self._events_lock = threading.Lock()
        self._status: dict = {}
        self._ordered = False  # order_until_heard(): DATA on stream 0, ordered, until the peer is heard
        self._aborted = False
        _tune_paths(sock)
        self.info()

    def order_until_heard(self) -> None:
        # READY goes out ordered on stream 0; DATA on the unordered streams right after it could be delivered
        # first (RFC 9260 section 6.6), and the dialler, still waiting for READY, would refuse it. Until the
        # dialler's first frame after READY arrives (it has READY then), our DATA follows READY on stream 0.
        self._ordered = True

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        spread = data and not self._ordered
        sid = next(self._data_streams) if spread else 0
        cmsg = [(api.SOL_SCTP, SCTP_SNDINFO, SNDINFO.pack(sid, self._flags if spread else 0, 0, 0, 0))]
        deadline = None
        while not self._aborted:
            try:
                self.sock.sendmsg(parts, cmsg)  # one message: all of it or nothing
                return
            except BlockingIOError:  # SEND_SLICE passed without room for the whole message: nothing was sent
                now = time.monotonic()
                deadline = deadline or now + self.send_stall - SEND_SLICE
                if now >= deadline:
                    raise TransportError(f"{self.label}: the peer accepted no data for {self.send_stall:g} s") from None
            except OSError as exc:
                if self._aborted:
                    break
                if exc.errno in (errno.ECONNRESET, errno.ESRCH, errno.EPIPE):  # ESRCH: the association was freed
                    raise TransportError(f"{self.label}: association ended (aborted by the peer, or it timed "
                                         f"out)") from None
                raise TransportError(f"send on {self.label} failed: {exc.strerror or exc}") from None
        raise TransportError(f"{self.label} aborted")

    def recv(self, expect: Expect = SESSION) -> memoryview | None:
        while True:
            message = self._recv_message(expect)
            if message is None:
                return None
            data, anc, flags = message
            if flags & MSG_NOTIFICATION:
                self._notification(memoryview(data))
                continue
            self._ordered = False
            for level, kind, raw in anc:
                if level == api.SOL_SCTP and kind == SCTP_RCVINFO:
                    self.streams_seen[RCVINFO.unpack_from(raw)[0]] += 1
            return memoryview(data)

    def _recv_message(self, expect: Expect) -> tuple[bytes, list, int] | None:
        """One whole SCTP message as (bytes, ancillary data, flags); None when the peer closed. The frame header is
        peeked first, so garbage is refused before anything is allocated and the message is received into a
        buffer of its exact size. A message the kernel hands over in pieces (partial delivery) is joined."""
        head, _, flags = self._recvmsg(HEADER_SIZE, 0, socket.MSG_PEEK)
        if not head and not flags:
            return None
        if flags & MSG_NOTIFICATION:  # from our own kernel: its header gives its length
            size = NOTIF_HEAD.unpack_from(head)[2] if len(head) >= NOTIF_HEAD.size else MAX_NOTIFICATION
            size = max(NOTIF_HEAD.size, min(size, MAX_NOTIFICATION))
        else:  # a peer's message: never more than its header allows, or than a header
            size = HEADER_SIZE + parse_header(head, expect)[1] if len(head) == HEADER_SIZE else HEADER_SIZE
        pieces: list[bytes] = []
        ancillary: list = []
        got = 0
        while True:
            data, anc, flags = self._recvmsg(size - got, self._cmsg)
            if not data and not flags:
                raise TransportError(f"{self.label} closed in the middle of a message")
            pieces.append(data)
            ancillary += anc
            got += len(data)
            if flags & socket.MSG_EOR:
                break
            if got >= size:
                raise RemoteProtocolError(f"SCTP message longer than the {size} bytes its header announced "
                                          f"on {self.label}")
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), ancillary, flags

    def _recvmsg(self, size: int, ancsize: int, flags: int = 0) -> tuple[bytes, list, int]:
        try:
            data, anc, msg_flags, _ = self.sock.recvmsg(size, ancsize, flags)
        except OSError as exc:
            if exc.errno == errno.ECONNRESET:
                raise TransportError(f"{self.label}: association aborted by the peer") from None
            raise TransportError(f"receive on {self.label} failed: {exc.strerror or exc}") from None
        return data, anc, msg_flags

    def _notification(self, raw: memoryview) -> None:
        kind, _flags, _length = NOTIF_HEAD.unpack_from(raw)
        text = f"notification {kind:#x}"
        if kind == PEER_ADDR_CHANGE and len(raw) >= 8 + 128 + 8:
            peer = api.unpack_sockaddr(raw[8 : 8 + 128])  # struct sctp_paddr_change: header, then the address
            addr = peer[0] if peer else "?"
            state = struct.unpack_from("=i", raw, 8 + 128)[0]
            text = f"peer address {addr} {_ADDR_STATES.get(state, state)}"
        elif kind == ASSOC_CHANGE and len(raw) >= 10:
            state = struct.unpack_from("=H", raw, 8)[0]
            text = f"association {_ASSOC_STATES.get(state, state)}"
        elif kind == SHUTDOWN_EVENT:
            text = "peer shut the association down"
        elif kind in (SEND_FAILED, SEND_FAILED_EVENT):
            text = "a message could not be sent"
        elif kind == REMOTE_ERROR:
            text = "remote error"
        with self._events_lock:
            self.events.append(text)
            del self.events[:-64]  # bounded

    def set_send_stall(self, seconds: float) -> None:
        # An SCTP message goes into the send buffer whole or not at all, so a send waits for room for the whole
        # frame: on a 1 Mbit/s path a 256 KiB frame needs 2 s of the peer's SACKs, however steadily they come.
        # The stall bound is for a peer that accepts nothing, so it is not cut below what a slow path needs.
        # The kernel waits in slices of SEND_SLICE (SO_SNDTIMEO), so that abort() releases a blocked sender:
        # neither shutdown() nor close() wakes it (docs/sctp-notes.md section 8).
        super().set_send_stall(SEND_SLICE)
        self.send_stall = max(seconds, SCTP_MIN_STALL)

    def abort(self) -> None:
        """A dead path: ABORT the association (RFC 9260 section 9.1) rather than shut it down gracefully, which
        would keep pushing the send queue over whatever address is left, duplicating what the session resends
        elsewhere. SCTP_ABORT in sendmsg is refused on one-to-one sockets (EINVAL), so: linger {1, 0}, wake the
        receiving thread (SHUT_RD sends nothing), let the sender see the flag within SEND_SLICE; close() then
        sends the ABORT once the last thread has let go of the socket."""
        self._aborted = True
        for call in (lambda: self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                     lambda: self.sock.shutdown(socket.SHUT_RD)):
            try:
                call()
            except OSError:
                pass  # already closed or reset

    def rtt(self) -> float | None:
        """The srtt of the address the association sends on: its primary while that is active, else the best
        active one (after an in-association failover the primary's srtt is stale)."""
        fd = self.sock.fileno()
        try:
            st = api.assoc_status(fd)
            srtt = st.srtt_ms if st.primary_state == api.SCTP_ACTIVE else 0
            if not srtt:
                active = [i.srtt_ms for a in api.peer_addresses(fd)
                          if (i := api.peer_addr_info(fd, a)).state == api.SCTP_ACTIVE and i.srtt_ms]
                srtt = min(active, default=0)
        except OSError:
            return None  # association gone
        return srtt / 1e3 if srtt else None

    def info(self) -> dict:
        out: dict = {"out_streams": self.out_streams, "in_streams": self.in_streams, "sndbuf": self.sndbuf,
                     "max_frame": self.max_frame,
                     "streams_seen": {str(k): v for k, v in sorted(self.streams_seen.items())}}
        with self._events_lock:
            out["events"] = list(self.events)
        try:
            fd = self.sock.fileno()
            st = api.assoc_status(fd)
            self._status = dict(state=st.state, rwnd=st.rwnd, unacked_chunks=st.unacked_chunks,
                                pending_chunks=st.pending_chunks, primary=st.primary[0] if st.primary else None,
                                primary_state=st.primary_state, cwnd=st.cwnd, srtt_ms=st.srtt_ms, rto_ms=st.rto_ms,
                                mtu=st.mtu, peer_addresses=[a[0] for a in api.peer_addresses(fd)])
            stats = api.assoc_stats(fd)
            self._status.update(rtx_chunks=stats["rtx_chunks"], max_rto_ms=stats["max_rto_ms"])
        except OSError:
            pass  # association gone (closed or aborted): report its last known state
        out.update(self._status)
        return out


def _new_socket(family: int, streams: int) -> tuple[socket.socket, int]:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, IPPROTO_SCTP)
    except OSError as exc:
        raise TransportError(f"cannot create an SCTP socket: {exc.strerror} (modprobe sctp?)") from None
    try:
        return sock, _tune(sock, streams)
    except BaseException:
        sock.close()
        raise


def _resolve(host: str, port: int, family: int = socket.AF_UNSPEC) -> str:
    """An address for `host` (a literal, or a name through getaddrinfo); OSError (socket.gaierror) if none."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    return str(infos[0][4][0])


def connect(remote: tuple[str, int], local: str | None = None, timeout: float = 5.0, pinned: bool = False,
            streams: int = DEFAULT_STREAMS) -> SctpChannel:
    """One association to `remote`, bound to every local address of its family (`local` first) so it can fail
    over; `pinned`: bound to `local` alone, so every packet leaves from it (source routing picks the uplink)."""
    try:
        host = _resolve(remote[0], remote[1])
    except (OSError, UnicodeError) as exc:
        raise ConnectError(f"cannot resolve {remote[0]}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        local = _resolve(local, 0, api.family_of(host)) if local else None
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot use local address {local}: {getattr(exc, 'strerror', None) or exc}") from None
    family = api.family_of(host)
    if local and api.family_of(local) != family:
        raise UsageError(f"local address {local} and {host} are of different address families")
    sock, sndbuf = _new_socket(family, streams)
    try:
        if pinned and local:
            locals_ = [local]
        elif ipaddress.ip_address(host).is_loopback:
            locals_ = [local or host]
        else:
            locals_ = api.host_addresses(family)
            if local:
                locals_ = [local] + [a for a in locals_ if a != local]
        try:
            if locals_:
                api.bindx(sock, [(a, 0) for a in locals_])
            sock.settimeout(timeout)
            sock.connect((host, remote[1]))
        except OSError as exc:
            raise connect_error(exc, remote, local, timeout) from None
        sock.settimeout(None)
        try:
            api.set_primary(sock, (host, remote[1]))
        except OSError:
            pass  # already the primary: the address we connected to
        return SctpChannel(sock, sndbuf)
    except BaseException:
        sock.close()
        raise


class SctpListener(Listener):
    """One SCTP socket for every bind address (sctp_bindx), IPv4 and IPv6 alike; `::` is dual-stack."""

    transport = "sctp"

    def __init__(self, binds: Sequence[str], port: int, backlog: int = 128, streams: int = DEFAULT_STREAMS) -> None:
        self.port = port
        wildcard = next((b for b in binds if b in ("", "0.0.0.0", "::")), None)
        try:
            addrs = [] if wildcard is not None else [_resolve(b, port) for b in binds]
        except (OSError, UnicodeError) as exc:
            raise UsageError(f"cannot listen on {', '.join(binds)}: {getattr(exc, 'strerror', None) or exc}") from None
        v6 = wildcard == "::" or any(api.family_of(a) == socket.AF_INET6 for a in addrs)
        self.sock, self._sndbuf = _new_socket(socket.AF_INET6 if v6 else socket.AF_INET, streams)
        try:
            try:
                if addrs:
                    api.bindx(self.sock, [(a, port) for a in addrs])
                else:  # the wildcard: an association will list every address of the host (of both families on ::)
                    if v6:
                        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    self.sock.bind(("::" if v6 else "0.0.0.0", port))
            except OSError as exc:
                raise bind_error(exc, ",".join(addrs) or wildcard or "*", port) from None
            self.sock.listen(backlog)
        except BaseException:
            self.sock.close()
            raise

    def addresses(self) -> list[tuple[str, int]]:
        return api.local_bound(self.sock.fileno())

    def accept(self, timeout: float | None) -> SctpChannel | None:
        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except (TimeoutError, BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EAGAIN):
                return None
            raise
        conn.settimeout(None)
        try:
            return SctpChannel(conn, self._sndbuf)
        except OSError:
            conn.close()
            return None

    def close(self) -> None:
        self.sock.close()

"""Kernel SCTP transport: one multi-homed, multi-stream association per path.

Linux SCTP has no concurrent multipath: an association sends new data only on its primary path and keeps the
other addresses for failover. So every path gets its own association, bound (bindx) to every local address so
the kernel can move it to another link if its own dies, with its primary set to the path's remote address so that
in normal operation each link carries its own association. Striping across associations is done above, by the
sans-IO core.

pysctp (RFC 6458 API) sets associations up: bindx, connect, primary address. The data path uses the standard
socket module: `sendmsg` with an SCTP_SNDINFO ancillary record picks the stream (control frames on stream 0, DATA
striped over the others) without copying the payload, and `recvmsg` with SCTP_RECVRCVINFO enabled reports the
stream each message really arrived on (without it every message looks as if it came on stream 0). One frame is
one SCTP message, received straight into its own buffer (the frame header is peeked first for its length), so no
byte is copied in user space.

Association status is read with getsockopt through ctypes, which releases the GIL: the kernel takes the socket
lock for it, and a sendmsg of a large message holds that lock for milliseconds on a slow CPU. pysctp's
get_status (and the socket module's getsockopt) keep the GIL meanwhile, which stalled every thread of the
process (measured in the emulated VM: 11 % of the sender's time).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import itertools
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import sctp as pysctp  # pysctp

from ..errors import ConnectError, RemoteProtocolError, TransportError
from ..proto.frames import HEADER_SIZE, MAX_FRAME, SESSION, Expect, parse_header
from .base import Buffer, Listener, SocketChannel, bind_error, connect_error

SOL_SCTP = 132
SCTP_RTOINFO = 0
SCTP_INITMSG = 2
SCTP_NODELAY = 3
SCTP_STATUS = 14
SCTP_RECVRCVINFO = 32
SCTP_GET_PEER_ADDRS = 108
SCTP_EVENT = 127
SCTP_SNDINFO = 2  # cmsg types
SCTP_RCVINFO = 3
SCTP_UNORDERED = 1
MSG_NOTIFICATION = 0x8000

SNDINFO = struct.Struct("=HHIIi")  # sid, flags, ppid, context, assoc_id
RCVINFO = struct.Struct("=HHHxxIIIIi")  # sid, ssn, flags, ppid, tsn, cumtsn, context, assoc_id
RTOINFO = struct.Struct("=iIII")  # assoc_id, initial, max, min (ms)
INITMSG = struct.Struct("=HHHH")  # num_ostreams, max_instreams, max_attempts, max_init_timeo
EVENT = struct.Struct("=iHBx")  # assoc_id, type, on
PADDRPARAMS = struct.Struct("=i128sIHIIIIBx")  # assoc_id, addr, hbinterval, pathmaxrxt, pathmtu, sackdelay, flags,
SCTP_PEER_ADDR_PARAMS = 9  # ipv6_flowlabel, dscp (the kernel's packed struct sctp_paddrparams)
SPP_HB_ENABLE = 1
NOTIF_HEAD = struct.Struct("=HHI")  # sn_type, sn_flags, sn_length
# struct sctp_status: assoc_id, state, rwnd, unackdata, penddata, instrms, outstrms, fragmentation point; then
# the primary path's struct sctp_paddrinfo (packed): assoc_id, sockaddr_storage, state, cwnd, srtt, rto, mtu.
STATUS = struct.Struct("=iiIHHHHI")
PADDRINFO = struct.Struct("=i128siIIII")
GETADDRS = struct.Struct("=iI")  # struct sctp_getaddrs: assoc_id, address count (the addresses follow)
_STATUS_SIZE = STATUS.size + PADDRINFO.size  # 176
_SOCKADDR_LEN = {socket.AF_INET: 16, socket.AF_INET6: 28}

# RFC 6458 notification types (Linux values)
ASSOC_CHANGE, PEER_ADDR_CHANGE, SEND_FAILED, REMOTE_ERROR, SHUTDOWN_EVENT = 0x8001, 0x8002, 0x8003, 0x8004, 0x8005
SEND_FAILED_EVENT = 0x800D
_SUBSCRIBE = (ASSOC_CHANGE, PEER_ADDR_CHANGE, SEND_FAILED_EVENT, REMOTE_ERROR, SHUTDOWN_EVENT)
_ADDR_STATES = {0: "available", 1: "unreachable", 2: "removed", 3: "added", 4: "made-primary", 5: "confirmed",
                6: "potentially-failed"}
_ASSOC_STATES = {0: "comm-up", 1: "comm-lost", 2: "restart", 3: "shutdown-complete", 4: "cant-start"}

DEFAULT_STREAMS = 8
_SOCKBUF = 8 << 20  # a message must fit in the send buffer: room for several 1 MiB frames
# Failover inside an association must beat our own silence detection (--dead-after, 1 s by default): heartbeat
# every 200 ms, give up on an address after 2 retransmissions, RTO between 50 ms and 1 s (kernel defaults:
# 30 s, 5, 1-60 s).
HB_INTERVAL_MS, PATH_MAX_RXT, RTO_INITIAL_MS, RTO_MIN_MS, RTO_MAX_MS = 200, 2, 200, 50, 1000


def local_addresses(include_loopback: bool = False) -> list[str]:
    """Every IPv4 address of this host (of its network namespace), secondary ones included: the /32 "host LOCAL"
    entries of the kernel's FIB. Read from /proc rather than netlink because it is cheap at every connect."""
    addrs: list[str] = []
    last = None
    with open("/proc/net/fib_trie") as f:
        for line in f:
            text = line.strip()
            if text.startswith(("|--", "+--")):
                last = text.split()[1]
            elif text.endswith("/32 host LOCAL") and last:
                addrs.append(last)
    return [a for a in dict.fromkeys(addrs) if include_loopback or not ipaddress.ip_address(a).is_loopback]


def _tune(sk: pysctp.sctpsocket, streams: int) -> None:
    raw = sk.sock()
    raw.setsockopt(SOL_SCTP, SCTP_INITMSG, INITMSG.pack(streams, streams, 0, 0))
    raw.setsockopt(SOL_SCTP, SCTP_NODELAY, 1)
    raw.setsockopt(SOL_SCTP, SCTP_RECVRCVINFO, 1)
    raw.setsockopt(SOL_SCTP, SCTP_RTOINFO, RTOINFO.pack(0, RTO_INITIAL_MS, RTO_MAX_MS, RTO_MIN_MS))
    for kind in _SUBSCRIBE:
        try:
            raw.setsockopt(SOL_SCTP, SCTP_EVENT, EVENT.pack(0, kind, 1))
        except OSError:
            pass  # an older kernel without this event: we only lose a log line
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE: beyond wmem_max as root
        try:
            raw.setsockopt(socket.SOL_SOCKET, force, _SOCKBUF)
        except OSError:
            raw.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)


def _tune_paths(raw: socket.socket) -> None:
    """Fast failover between the association's addresses: heartbeat interval and retransmission limit for every
    peer address at once (a zero address). Done with the stdlib: pysctp's set_paddrparams drops spp_flags, and
    without SPP_HB_ENABLE the kernel ignores the heartbeat interval (docs/sctp-notes.md)."""
    params = PADDRPARAMS.pack(0, bytes(128), HB_INTERVAL_MS, PATH_MAX_RXT, 0, 0, SPP_HB_ENABLE, 0, 0)
    try:
        raw.setsockopt(SOL_SCTP, SCTP_PEER_ADDR_PARAMS, params)
    except OSError:
        pass  # best effort: the defaults still fail over, only later


_libc = ctypes.CDLL(None, use_errno=True)
_libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]


def _getsockopt(fd: int, option: int, size: int) -> bytes:
    """getsockopt(SOL_SCTP, option) with the GIL released (a ctypes call): see the module docstring."""
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(fd, SOL_SCTP, option, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[: length.value]


def _sockaddr(raw: bytes | memoryview) -> tuple[str, int] | None:
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(raw[4:8])), struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, bytes(raw[8:24])), struct.unpack_from("!H", raw, 2)[0]
    return None


@dataclass(frozen=True)
class AssocStatus:
    """SCTP_STATUS of a one-to-one socket's association, with its primary path."""

    state: int
    rwnd: int
    unacked_chunks: int
    pending_chunks: int
    in_streams: int
    out_streams: int
    primary: tuple[str, int] | None
    primary_state: int
    cwnd: int
    srtt_ms: int
    rto_ms: int
    mtu: int


def assoc_status(fd: int) -> AssocStatus:
    raw = _getsockopt(fd, SCTP_STATUS, _STATUS_SIZE)
    _aid, state, rwnd, unacked, pending, instrms, outstrms, _frag = STATUS.unpack_from(raw)
    _paid, addr, pstate, cwnd, srtt, rto, mtu = PADDRINFO.unpack_from(raw, STATUS.size)
    return AssocStatus(state, rwnd, unacked, pending, instrms, outstrms, _sockaddr(addr), pstate, cwnd, srtt, rto,
                       mtu)


def peer_addresses(fd: int, most: int = 64) -> list[tuple[str, int]]:
    """The association's peer addresses (SCTP_GET_PEER_ADDRS; the kernel packs them by their own size)."""
    raw = memoryview(_getsockopt(fd, SCTP_GET_PEER_ADDRS, GETADDRS.size + most * _SOCKADDR_LEN[socket.AF_INET6]))
    _aid, count = GETADDRS.unpack_from(raw)
    out, off = [], GETADDRS.size
    for _ in range(count):
        size = _SOCKADDR_LEN.get(struct.unpack_from("=H", raw, off)[0])
        if size is None or off + size > len(raw):
            break
        addr = _sockaddr(raw[off : off + size])
        if addr is not None:
            out.append(addr)
        off += size
    return out


SCTP_MIN_STALL = 5.0  # seconds: see SctpChannel.set_send_stall


class SctpChannel(SocketChannel):
    transport = "sctp"

    def __init__(self, sk: pysctp.sctpsocket, unordered: bool = True) -> None:
        self.sk = sk
        self.sock: socket.socket = sk.sock()
        self.local = self.sock.getsockname()[:2]
        self.remote = self.sock.getpeername()[:2]
        status = assoc_status(self.sock.fileno())
        self.out_streams = max(1, status.out_streams)
        self.in_streams = status.in_streams
        self._data_streams = itertools.cycle(range(1, self.out_streams) if self.out_streams > 1 else [0])
        self._flags = SCTP_UNORDERED if unordered else 0
        self._cmsg = socket.CMSG_SPACE(RCVINFO.size)
        self.streams_seen: Counter[int] = Counter()
        self.events: list[str] = []
        self._events_lock = threading.Lock()
        self._status: dict = {}
        self._ordered = False  # order_until_heard(): DATA on stream 0, ordered, until the peer is heard
        _tune_paths(self.sock)
        self.info()

    def order_until_heard(self) -> None:
        # READY goes out ordered on stream 0; DATA on the unordered streams right after it could be delivered
        # first, and the dialler, still waiting for READY, would refuse it. Until the dialler's first frame after
        # READY arrives (it has READY then), our DATA follows READY on stream 0, in order.
        self._ordered = True

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        spread = data and not self._ordered
        sid = next(self._data_streams) if spread else 0
        info = SNDINFO.pack(sid, self._flags if spread else 0, 0, 0, 0)
        try:
            self.sock.sendmsg(parts, [(SOL_SCTP, SCTP_SNDINFO, info)])  # one message: all of it or nothing
        except BlockingIOError:
            raise TransportError(f"{self.label}: the peer accepted no data for {self.send_stall:g} s") from None
        except OSError as exc:
            raise TransportError(f"send on {self.label} failed: {exc.strerror or exc}") from None

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
                if level == SOL_SCTP and kind == SCTP_RCVINFO:
                    self.streams_seen[RCVINFO.unpack_from(raw)[0]] += 1
            return memoryview(data)

    def _recv_message(self, expect: Expect) -> tuple[bytes, list, int] | None:
        """One whole SCTP message as (bytes, ancillary data, flags); None when the peer closed. The frame header is
        peeked first, so garbage is refused before anything is allocated and the message is received into a
        buffer of its exact size. A message the kernel hands over in pieces (partial delivery) is joined."""
        head, _, flags = self._recvmsg(HEADER_SIZE, 0, socket.MSG_PEEK)
        if not head and not flags:
            return None
        size = MAX_FRAME  # a notification (from our own kernel)
        if not flags & MSG_NOTIFICATION:  # a peer's message: never more than its header allows, or than a header
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
            peer = _sockaddr(raw[8 : 8 + 128])  # struct sctp_paddr_change: header, then the address
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
        super().set_send_stall(max(seconds, SCTP_MIN_STALL))

    def close(self) -> None:
        self.sk.close()

    def rtt(self) -> float | None:
        try:
            srtt_ms = assoc_status(self.sock.fileno()).srtt_ms
        except OSError:
            return None  # association gone
        return srtt_ms / 1e3 if srtt_ms else None

    def info(self) -> dict:
        out: dict = {"out_streams": self.out_streams, "in_streams": self.in_streams,
                     "streams_seen": {str(k): v for k, v in sorted(self.streams_seen.items())}}
        with self._events_lock:
            out["events"] = list(self.events)
        try:
            fd = self.sock.fileno()
            st = assoc_status(fd)
            self._status = dict(state=st.state, rwnd=st.rwnd, unacked_chunks=st.unacked_chunks,
                                pending_chunks=st.pending_chunks, primary=st.primary[0] if st.primary else None,
                                primary_state=st.primary_state, cwnd=st.cwnd, srtt_ms=st.srtt_ms, rto_ms=st.rto_ms,
                                mtu=st.mtu, peer_addresses=[a[0] for a in peer_addresses(fd)])
        except OSError:
            pass  # association gone (closed or aborted): report its last known state
        out.update(self._status)
        return out


def _new_socket(family: int, streams: int) -> pysctp.sctpsocket_tcp:
    try:
        sk = pysctp.sctpsocket_tcp(family)
    except OSError as exc:
        raise TransportError(f"cannot create an SCTP socket: {exc.strerror} (modprobe sctp?)") from None
    _tune(sk, streams)
    return sk


def connect(remote: tuple[str, int], local: str | None = None, timeout: float = 5.0,
            streams: int = DEFAULT_STREAMS) -> SctpChannel:
    """One association to `remote`, bound to every local address (`local` first) so it can fail over."""
    try:
        host = socket.gethostbyname(remote[0])
    except OSError as exc:  # an IPv6 address or an unknown name: this transport is IPv4 only
        raise ConnectError(f"cannot use {remote[0]} over SCTP: {exc.strerror or exc} (IPv4 only)") from None
    sk = _new_socket(socket.AF_INET, streams)
    try:
        locals_ = local_addresses()
        if local:
            locals_ = [local] + [a for a in locals_ if a != local]
        if ipaddress.ip_address(host).is_loopback:
            locals_ = [local or "127.0.0.1"]
        try:
            sk.bindx([(a, 0) for a in locals_])
        except OSError as exc:
            raise connect_error(exc, remote, local, timeout) from None
        sk.settimeout(timeout)
        try:
            sk.connect((host, remote[1]))
        except OSError as exc:
            raise connect_error(exc, remote, local, timeout) from None
        sk.settimeout(None)
        try:
            sk.set_primary(0, (host, remote[1]))
        except (OSError, RuntimeError):
            pass  # already the primary: the address we connected to
        return SctpChannel(sk)
    except BaseException:
        sk.close()
        raise


class SctpListener(Listener):
    transport = "sctp"

    def __init__(self, binds: Sequence[str], port: int, backlog: int = 128, streams: int = DEFAULT_STREAMS) -> None:
        self.port = port
        self.sk = _new_socket(socket.AF_INET, streams)
        try:
            addrs = [a for a in binds if a not in ("0.0.0.0", "")]
            try:
                if addrs:
                    self.sk.bindx([(a, port) for a in addrs])
                else:  # the wildcard: the association will list every address of the host
                    self.sk.bind(("0.0.0.0", port))
            except OSError as exc:
                raise bind_error(exc, ",".join(addrs) or "*", port) from None
            self.sk.listen(backlog)
            self.sk.settimeout(0.2)
        except BaseException:
            self.sk.close()
            raise

    def addresses(self) -> list[tuple[str, int]]:
        return [tuple(a[:2]) for a in self.sk.getladdrs()]

    def accept(self, timeout: float | None) -> SctpChannel | None:
        self.sk.settimeout(timeout)
        try:
            conn, _ = self.sk.accept()
        except (TimeoutError, BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EAGAIN):
                return None
            raise
        conn.settimeout(None)
        try:
            return SctpChannel(conn)
        except OSError:
            conn.close()
            return None

    def close(self) -> None:
        self.sk.close()



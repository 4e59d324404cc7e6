"""Kernel SCTP transport: one multi-homed, multi-stream association per path.

Linux SCTP has no concurrent multipath: an association sends new data only on its primary path and keeps the
other addresses for failover. So every path gets its own association, bound (bindx) to every local address so
the kernel can move it to another link if its own dies, with its primary set to the path's remote address so that
in normal operation each link carries its own association. Striping across associations is done above, by the
sans-IO core.

pysctp (RFC 6458 API) sets associations up: bindx, init parameters, primary address, heartbeat and RTO tuning,
status. The data path uses the standard socket module: `sendmsg` with an SCTP_SNDINFO ancillary record picks the
stream (control frames on stream 0, DATA striped over the others) without copying the payload, and `recvmsg_into`
with SCTP_RECVRCVINFO enabled reports the stream each message really arrived on (without it every message looks
as if it came on stream 0). One frame is one SCTP message.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
import struct
import threading
from collections import Counter
from collections.abc import Sequence

import sctp as pysctp  # pysctp

from ..errors import ConnectError, RemoteProtocolError, TransportError
from ..proto.frames import MAX_FRAME, parse_header
from .base import Buffer, Listener, SocketChannel, bind_error, connect_error

SOL_SCTP = 132
SCTP_RTOINFO = 0
SCTP_INITMSG = 2
SCTP_NODELAY = 3
SCTP_RECVRCVINFO = 32
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

# RFC 6458 notification types (Linux values)
ASSOC_CHANGE, PEER_ADDR_CHANGE, SEND_FAILED, REMOTE_ERROR, SHUTDOWN_EVENT = 0x8001, 0x8002, 0x8003, 0x8004, 0x8005
SEND_FAILED_EVENT = 0x800D
_SUBSCRIBE = (ASSOC_CHANGE, PEER_ADDR_CHANGE, SEND_FAILED_EVENT, REMOTE_ERROR, SHUTDOWN_EVENT)
_ADDR_STATES = {0: "available", 1: "unreachable", 2: "removed", 3: "added", 4: "made-primary", 5: "confirmed",
                6: "potentially-failed"}
_ASSOC_STATES = {0: "comm-up", 1: "comm-lost", 2: "restart", 3: "shutdown-complete", 4: "cant-start"}

DEFAULT_STREAMS = 8
_SOCKBUF = 8 << 20  # a message must fit in the send buffer: room for several 1 MiB frames
# Failover inside an association must beat our own silence detection (1.5 s): heartbeat every 200 ms, give up
# on an address after 2 retransmissions, RTO between 50 ms and 1 s (kernel defaults: 30 s, 5, 1-60 s).
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


class SctpChannel(SocketChannel):
    transport = "sctp"

    def __init__(self, sk: pysctp.sctpsocket, unordered: bool = True) -> None:
        self.sk = sk
        self.sock: socket.socket = sk.sock()
        self.local = self.sock.getsockname()[:2]
        self.remote = self.sock.getpeername()[:2]
        status = sk.get_status()
        self.out_streams = max(1, status.outstrms)
        self.in_streams = status.instrms
        self._data_streams = itertools.cycle(range(1, self.out_streams) if self.out_streams > 1 else [0])
        self._flags = SCTP_UNORDERED if unordered else 0
        self._buf = bytearray(MAX_FRAME)
        self._cmsg = socket.CMSG_SPACE(RCVINFO.size)
        self.streams_seen: Counter[int] = Counter()
        self.events: list[str] = []
        self._events_lock = threading.Lock()
        self._status: dict = {}
        _tune_paths(self.sock)
        self.info()

    def send(self, parts: Sequence[Buffer], data: bool = False) -> None:
        sid = next(self._data_streams) if data else 0
        info = SNDINFO.pack(sid, self._flags if data else 0, 0, 0, 0)
        try:
            self.sock.sendmsg(parts, [(SOL_SCTP, SCTP_SNDINFO, info)])
        except OSError as exc:
            raise TransportError(f"send on {self.label} failed: {exc.strerror or exc}") from None

    def recv(self) -> memoryview | None:
        view = memoryview(self._buf)
        while True:
            got = 0
            while True:  # one SCTP message, possibly delivered in pieces (partial delivery)
                try:
                    n, anc, flags, _ = self.sock.recvmsg_into([view[got:]], self._cmsg)
                except OSError as exc:
                    if exc.errno == errno.ECONNRESET:
                        raise TransportError(f"{self.label}: association aborted by the peer") from None
                    raise TransportError(f"receive on {self.label} failed: {exc.strerror or exc}") from None
                if n == 0 and not flags:
                    if got:
                        raise TransportError(f"{self.label} closed in the middle of a message")
                    return None
                got += n
                if flags & socket.MSG_EOR:
                    break
                if got >= len(view):
                    raise RemoteProtocolError(f"SCTP message over {len(view)} bytes on {self.label}")
            if flags & MSG_NOTIFICATION:
                self._notification(view[:got])
                continue
            for level, kind, raw in anc:
                if level == SOL_SCTP and kind == SCTP_RCVINFO:
                    self.streams_seen[RCVINFO.unpack_from(raw)[0]] += 1
            frame = view[:got]
            parse_header(frame[:8])  # validate before copying
            return memoryview(bytes(frame))  # the receive buffer is reused: the frame needs its own bytes

    def _notification(self, raw: memoryview) -> None:
        kind, _flags, _length = NOTIF_HEAD.unpack_from(raw)
        text = f"notification {kind:#x}"
        if kind == PEER_ADDR_CHANGE and len(raw) >= 8 + 128 + 8:
            family = struct.unpack_from("=H", raw, 8)[0]
            addr = socket.inet_ntoa(bytes(raw[12:16])) if family == socket.AF_INET else "?"
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


    def close(self) -> None:
        self.sk.close()

    def rtt(self) -> float | None:
        try:
            srtt_ms = self.sk.get_status().primary.srtt
        except (OSError, RuntimeError):
            return None  # association gone
        return srtt_ms / 1e3 if srtt_ms else None

    def info(self) -> dict:
        out: dict = {"out_streams": self.out_streams, "in_streams": self.in_streams,
                     "streams_seen": {str(k): v for k, v in sorted(self.streams_seen.items())}}
        with self._events_lock:
            out["events"] = list(self.events)
        try:
            st = self.sk.get_status()
            prim = st.primary
            self._status = dict(state=st.state, rwnd=st.rwnd, unacked_chunks=st.unackdata,
                                pending_chunks=st.penddata, primary=str(prim.sockaddr[0]), primary_state=prim.state,
                                cwnd=prim.cwnd, srtt_ms=prim.srtt, rto_ms=prim.rto, mtu=prim.mtu,
                                peer_addresses=[str(a[0]) for a in self.sk.getpaddrs()])
        except (OSError, RuntimeError):
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
        except (TimeoutError, socket.timeout, BlockingIOError, InterruptedError):
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


Listener = SctpListener  # type: ignore[misc]

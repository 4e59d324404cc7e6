"""The kernel's SCTP socket API (RFC 6458) through the standard library: socket options, addresses, status.

Everything pysctp did for us is a setsockopt or getsockopt on a plain `socket.socket(..., IPPROTO_SCTP)`:
`SCTP_SOCKOPT_BINDX_ADD` takes a packed array of sockaddrs of either family (pysctp's bindx copied a 28-byte
sockaddr_in6 into a 16-byte struct sockaddr, a stack overflow in the extension, so IPv6 binds failed), and the
status reads take their input in the buffer they fill, which only libc's getsockopt can pass (through ctypes, which
also releases the GIL: the kernel takes the socket lock for them, and a sendmsg of a large message holds that lock
for milliseconds on a slow CPU). Struct layouts and the kernel behaviour behind each setting: docs/sctp-notes.md.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

SOL_SCTP = 132
SCTP_RTOINFO = 0
SCTP_INITMSG = 2
SCTP_NODELAY = 3
SCTP_PRIMARY_ADDR = 6
SCTP_PEER_ADDR_PARAMS = 9
SCTP_STATUS = 14
SCTP_GET_PEER_ADDR_INFO = 15
SCTP_DELAYED_SACK = 16
SCTP_PEER_ADDR_THLDS = 31
SCTP_RECVRCVINFO = 32
SCTP_SOCKOPT_BINDX_ADD = 100
SCTP_GET_PEER_ADDRS = 108
SCTP_GET_LOCAL_ADDRS = 109
SCTP_GET_ASSOC_STATS = 112
SCTP_EVENT = 127
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # past net.core.wmem_max/rmem_max; needs CAP_NET_ADMIN
SPP_HB_ENABLE = 1
SCTP_ACTIVE = 2  # struct sctp_paddrinfo spinfo_state

RTOINFO = struct.Struct("=iIII")  # assoc_id, initial, max, min (ms)
INITMSG = struct.Struct("=HHHH")  # num_ostreams, max_instreams, max_attempts, max_init_timeo
EVENT = struct.Struct("=iHBx")  # assoc_id, type, on
SACKINFO = struct.Struct("=iII")  # struct sctp_sack_info: assoc_id, sack_delay (ms), sack_freq (packets)
# struct sctp_paddrparams (packed): assoc_id, addr, hbinterval, pathmaxrxt, pathmtu, sackdelay, flags, flowlabel, dscp
PADDRPARAMS = struct.Struct("=i128sIHIIIIBx")
PADDRTHLDS = struct.Struct("=i4x128sHH4x")  # struct sctp_paddrthlds: not packed, the address 8-aligned (144)
PRIM = struct.Struct("=i128s")  # struct sctp_prim (packed): assoc_id, addr
# struct sctp_status: assoc_id, state, rwnd, unackdata, penddata, instrms, outstrms, fragmentation point; then
# the primary path's struct sctp_paddrinfo (packed): assoc_id, sockaddr_storage, state, cwnd, srtt, rto, mtu.
STATUS = struct.Struct("=iiIHHHHI")
PADDRINFO = struct.Struct("=i128siIIII")
GETADDRS = struct.Struct("=iI")  # struct sctp_getaddrs: assoc_id, address count (the addresses follow)
# struct sctp_assoc_stats: assoc_id, the address of the largest RTO, then 15 counters (u64)
ASSOC_STATS = struct.Struct("=i4x128s15Q")
_STAT_NAMES = ("max_rto_ms", "sacks_in", "sacks_out", "packets_out", "packets_in", "rtx_chunks", "outofseq_tsns",
               "dup_chunks_in", "gaps", "unordered_out", "unordered_in", "ordered_out", "ordered_in",
               "control_out", "control_in")
_SOCKADDR_LEN = {socket.AF_INET: 16, socket.AF_INET6: 28}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]


def getsockopt(fd: int, option: int, size: int, given: bytes = b"", trim: bool = True) -> bytes:
    """getsockopt(SOL_SCTP, option) with `given` as the buffer's input and the GIL released (a ctypes call).
    `trim`: cut to the length the kernel reports (the address lists report that of the addresses alone)."""
    buf = ctypes.create_string_buffer(given.ljust(size, b"\0"), size)
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(fd, SOL_SCTP, option, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[: length.value] if trim else buf.raw


# -- addresses ---------------------------------------------------------------------------------------------------
def family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def pack_sockaddr(ip: str, port: int) -> bytes:
    """A sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes), as the kernel's address arrays pack them."""
    if family_of(ip) == socket.AF_INET6:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + socket.inet_pton(
            socket.AF_INET6, ip) + bytes(4)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def unpack_sockaddr(raw: bytes | memoryview) -> tuple[str, int] | None:
    """(address text, port); an IPv4-mapped IPv6 address (a v4 peer of a dual-stack socket) as plain IPv4."""
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(raw[4:8])), port
    if family == socket.AF_INET6:
        ip = ipaddress.IPv6Address(bytes(raw[8:24]))
        return str(ip.ipv4_mapped or ip), port
    return None


def plain(sockname: tuple) -> tuple[str, int]:
    """getsockname/getpeername of a dual-stack socket, with an IPv4-mapped address as plain IPv4."""
    ip = ipaddress.ip_address(sockname[0].split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (str(mapped) if mapped else sockname[0]), sockname[1]


def bindx(sock: socket.socket, addrs: list[tuple[str, int]]) -> None:
    """sctp_bindx(SCTP_BINDX_ADD): bind every address at once (one port; 0 lets the kernel pick one for all)."""
    sock.setsockopt(SOL_SCTP, SCTP_SOCKOPT_BINDX_ADD, b"".join(pack_sockaddr(ip, port) for ip, port in addrs))


def set_primary(sock: socket.socket, remote: tuple[str, int]) -> None:
    sock.setsockopt(SOL_SCTP, SCTP_PRIMARY_ADDR, PRIM.pack(0, pack_sockaddr(*remote)))


def _addresses(fd: int, option: int, most: int = 64) -> list[tuple[str, int]]:
    """SCTP_GET_PEER_ADDRS / SCTP_GET_LOCAL_ADDRS: the kernel packs the addresses by their own size."""
    raw = memoryview(getsockopt(fd, option, GETADDRS.size + most * _SOCKADDR_LEN[socket.AF_INET6], trim=False))
    _aid, count = GETADDRS.unpack_from(raw)
    out, off = [], GETADDRS.size
    for _ in range(count):
        size = _SOCKADDR_LEN.get(struct.unpack_from("=H", raw, off)[0])
        if size is None or off + size > len(raw):
            break
        addr = unpack_sockaddr(raw[off : off + size])
        if addr is not None:
            out.append(addr)
        off += size
    return out


def peer_addresses(fd: int) -> list[tuple[str, int]]:
    return _addresses(fd, SCTP_GET_PEER_ADDRS)


def local_bound(fd: int) -> list[tuple[str, int]]:
    """The addresses an SCTP socket is bound to (a wildcard lists every address of the host)."""
    return _addresses(fd, SCTP_GET_LOCAL_ADDRS)


def host_addresses(family: int = socket.AF_INET, include_loopback: bool = False) -> list[str]:
    """Every address of this host (of its network namespace) of one family, secondary ones included: IPv4 from the
    /32 "host LOCAL" entries of the kernel's FIB, IPv6 the global ones that finished duplicate address detection.
    Read from /proc rather than netlink because it is cheap at every connect."""
    addrs: list[str] = []
    if family == socket.AF_INET6:
        try:
            with open("/proc/net/if_inet6") as f:
                for line in f:  # address, ifindex, prefix length, scope, flags, name
                    hexaddr, _idx, _plen, scope, flags = line.split()[:5]
                    if int(scope, 16) == 0 and not int(flags, 16) & 0xC8:  # global; not tentative/dadfailed/...
                        addrs.append(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
        except OSError:
            return []
    else:
        last = None
        with open("/proc/net/fib_trie") as f:
            for line in f:
                text = line.strip()
                if text.startswith(("|--", "+--")):
                    last = text.split()[1]
                elif text.endswith("/32 host LOCAL") and last:
                    addrs.append(last)
    return [a for a in dict.fromkeys(addrs) if include_loopback or not ipaddress.ip_address(a).is_loopback]


# -- status ------------------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class PeerAddrInfo:
    """SCTP_GET_PEER_ADDR_INFO of one peer address of the association."""

    addr: tuple[str, int] | None
    state: int
    cwnd: int
    srtt_ms: int
    rto_ms: int
    mtu: int


def assoc_status(fd: int) -> AssocStatus:
    raw = getsockopt(fd, SCTP_STATUS, STATUS.size + PADDRINFO.size)
    _aid, state, rwnd, unacked, pending, instrms, outstrms, _frag = STATUS.unpack_from(raw)
    _paid, addr, pstate, cwnd, srtt, rto, mtu = PADDRINFO.unpack_from(raw, STATUS.size)
    return AssocStatus(state, rwnd, unacked, pending, instrms, outstrms, unpack_sockaddr(addr), pstate, cwnd, srtt,
                       rto, mtu)


def peer_addr_info(fd: int, addr: tuple[str, int]) -> PeerAddrInfo:
    raw = getsockopt(fd, SCTP_GET_PEER_ADDR_INFO, PADDRINFO.size, PADDRINFO.pack(0, pack_sockaddr(*addr), 0, 0, 0,
                                                                                 0, 0))
    _aid, got, state, cwnd, srtt, rto, mtu = PADDRINFO.unpack_from(raw)
    return PeerAddrInfo(unpack_sockaddr(got), state, cwnd, srtt, rto, mtu)


def assoc_stats(fd: int) -> dict[str, int]:
    """SCTP_GET_ASSOC_STATS: the association's own counters (retransmitted chunks, SACKs, packets...)."""
    raw = getsockopt(fd, SCTP_GET_ASSOC_STATS, ASSOC_STATS.size)
    return dict(zip(_STAT_NAMES, ASSOC_STATS.unpack_from(raw)[2:], strict=True))


# -- tuning ------------------------------------------------------------------------------------------------------
def set_buffers(sock: socket.socket, size: int) -> tuple[int, int, bool]:
    """Ask for `size`-byte send and receive buffers; (send, receive) as the kernel really gave them, and whether
    net.core.wmem_max/rmem_max cut them (no CAP_NET_ADMIN for the FORCE options)."""
    capped = False
    for opt, force in ((socket.SO_SNDBUF, SO_SNDBUFFORCE), (socket.SO_RCVBUF, SO_RCVBUFFORCE)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            capped = True
    snd = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    rcv = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return snd, rcv, capped and min(snd, rcv) < 2 * size  # the kernel reports twice what it was asked


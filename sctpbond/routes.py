"""Addresses and routes for automatic paths: what a listener advertises, and where a client dials from.

The listener advertises its addresses in WELCOME, as MPTCP's ADD_ADDR does: the addresses it is bound to, or,
bound to the wildcard, every usable local address of the family the client came in on (read with pyroute2).
Loopback is advertised only to a client that itself came in over loopback, and such a client gets nothing else:
it runs on the same host, where every address of the listener is reached over loopback anyway.

The client then dials each advertised address it does not already use, from the local address the kernel's
routing table picks for it (`ip route get`: the preferred source, or an address on the outgoing interface), so
each path is pinned to the link its route takes. Addresses with no route, addresses of the client's own host
(a listener on the same host is reached over loopback whatever address is dialled: more such paths would only
be more loopback connections, which is what --multiplier is for), duplicates and addresses already in use are
skipped, and the session's connection limit is kept.

Pure functions (`parse_addresses`, `select_advertised`, `parse_route`, `plan_extra_paths`) take pyroute2's
netlink messages, or anything with `msg[field]` and `msg.get_attr(name)`, so they are tested without a kernel.
pyroute2 is imported only when routes or addresses are actually read: it costs ~0.3 s (300 modules), far more
on the emulated test VM, so a handshake never waits for it longer than `ADVERTISE_WAIT`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConnectError
from .proto.frames import MAX_ADDRS

LOG = logging.getLogger("sctpbond")

MAX_ADVERTISED = MAX_ADDRS  # what one WELCOME frame carries
ADVERTISE_WAIT = 1.5  # longest a handshake waits for the first read of the local addresses (pyroute2 import)
ADDRESS_CACHE_S = 1.0  # a burst of joins reads the local addresses once

# rtnetlink constants (linux/if_addr.h, linux/if.h, linux/rtnetlink.h)
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFF_UP = 0x1
RT_SCOPE_LINK = 253
RTN_UNICAST, RTN_LOCAL = 1, 2
_DOWN_STATES = {"DOWN", "LOWERLAYERDOWN", "NOTPRESENT"}
_WILDCARDS = {"", "0.0.0.0", "::"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize(addr: str) -> str:
    """Canonical text of an IP address (IPv4-mapped IPv6 as IPv4, no zone); anything else (a hostname) as is."""
    ip = _ip(addr)
    return str(ip) if ip is not None else addr


def _ip(addr: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_ip(addr: str) -> bool:
    return _ip(addr) is not None


def is_loopback(addr: str) -> bool:
    ip = _ip(addr)
    return ip is not None and ip.is_loopback


# --- the listener's side: which addresses to advertise -----------------------------------------------------------


@dataclass(frozen=True)
class LocalAddress:
    address: str
    ifname: str
    index: int
    usable: bool = True  # interface up, address neither tentative nor failed duplicate detection
    link_local: bool = False


def parse_addresses(addr_msgs: Iterable[Any], link_msgs: Iterable[Any]) -> list[LocalAddress]:
    """Local addresses from pyroute2's get_addr() and get_links() (in the kernel's order: by interface)."""
    links = {}
    for link in link_msgs:
        state = link.get_attr("IFLA_OPERSTATE")
        up = bool(link["flags"] & IFF_UP) and state not in _DOWN_STATES
        links[link["index"]] = (link.get_attr("IFLA_IFNAME") or f"if{link['index']}", up)
    out = []
    for msg in addr_msgs:
        # IFA_LOCAL is our side of a point-to-point link (IFA_ADDRESS is then the peer); IPv6 has only IFA_ADDRESS
        text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        ip = _ip(text) if text else None
        if ip is None:
            continue
        flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
        name, up = links.get(msg["index"], (msg.get_attr("IFA_LABEL") or f"if{msg['index']}", True))
        out.append(LocalAddress(
            address=str(ip), ifname=name, index=msg["index"],
            usable=up and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED),
            link_local=msg["scope"] == RT_SCOPE_LINK or ip.is_link_local,
        ))
    return out


def select_advertised(reached: str, bound: Sequence[str], local: Sequence[LocalAddress] | None,
                      limit: int = MAX_ADVERTISED) -> tuple[str, ...]:
    """What WELCOME advertises to a client that reached us at `reached`.

    `bound`: the listener's specific bind addresses (wildcards are ignored); without any, the usable `local`
    addresses (None: not known yet, then only `reached`). Only the family of `reached`; no link-local address
    (WELCOME cannot carry a zone); loopback addresses, and only those, to a client that came in over loopback.
    """
    here = _ip(reached)
    if here is None:
        return ()
    specific = [b for b in bound if b not in _WILDCARDS]
    if specific:
        candidates = specific
    elif local is None:
        candidates = [str(here)]
    else:
        candidates = [a.address for a in local if a.usable and not a.link_local]
    out: list[str] = []
    for text in candidates:
        ip = _ip(text)
        if ip is None or ip.version != here.version or ip.is_link_local:
            continue
        if ip.is_loopback != here.is_loopback:
            continue
        if str(ip) not in out:
            out.append(str(ip))
    return tuple(out[:limit])


_pyroute2_loaded = threading.Event()
_load_lock = threading.Lock()
_load_started = False
_cache: tuple[float, list[LocalAddress]] | None = None
_noted: set[str] = set()


def preload() -> threading.Event:
    """Import pyroute2 in a background thread (once); the event is set when that is done (or has failed)."""
    global _load_started
    with _load_lock:
        if not _load_started:
            _load_started = True

            def load() -> None:
                try:
                    import pyroute2  # noqa: F401
                except Exception:  # noqa: BLE001, S110 -- reported by whoever uses it next
                    pass
                finally:
                    _pyroute2_loaded.set()

            threading.Thread(target=load, name="pyroute2-import", daemon=True).start()
    return _pyroute2_loaded


def local_addresses(wait: float | None = None) -> list[LocalAddress] | None:
    """This host's addresses (its network namespace's), via pyroute2; None if pyroute2 is not imported within
    `wait` seconds. Cached for ADDRESS_CACHE_S."""
    global _cache
    now = time.monotonic()
    if _cache is not None and now - _cache[0] < ADDRESS_CACHE_S:
        return _cache[1]
    if not preload().wait(wait):
        return None
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = parse_addresses(ipr.get_addr(), ipr.get_links())
    _cache = (time.monotonic(), found)
    return found


def _note_once(message: str, level: int = logging.INFO) -> None:
    if message not in _noted:
        _noted.add(message)
        LOG.log(level, message)


def welcome_addresses(configured: Sequence[str] | None, listeners: Iterable[Any], channel: Any) -> tuple[str, ...]:
    """The `addresses` of the WELCOME answering `channel` (just accepted by one of `listeners`).

    `configured` (Options.advertise) overrides: None means "our own addresses", () advertises nothing. Never
    raises and never holds a handshake up for more than ADVERTISE_WAIT: advertising is best effort.
    """
    if configured is not None:
        return tuple(a for a in map(normalize, configured) if is_ip(a))[:MAX_ADVERTISED]
    reached = channel.local[0]
    try:
        bound = [a[0] for lst in listeners if lst.transport == channel.transport for a in lst.addresses()]
        specific = [b for b in bound if b not in _WILDCARDS]
        if specific or getattr(_ip(reached), "is_loopback", True):  # a loopback client gets only `reached`
            return select_advertised(reached, specific, None)
        local = local_addresses(ADVERTISE_WAIT)
        if local is None:
            _note_once(f"advertising only {reached} to this client: the local addresses were not read within "
                       f"{ADVERTISE_WAIT:g} s (pyroute2 still loading)")
        return select_advertised(reached, specific, local)
    except Exception as exc:  # noqa: BLE001 -- e.g. pyroute2 missing: the session works, without automatic paths
        _note_once(f"cannot list this host's addresses to advertise ({type(exc).__name__}: {exc}); "
                   "clients will use only the addresses they are given", logging.WARNING)
        return select_advertised(reached, (), None)


# --- the client's side: where to dial from ----------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    remote: str
    local: str | None  # source address the kernel would use: the path is pinned to it
    ifname: str | None
    gateway: str | None = None
    is_local: bool = False  # the remote is an address of this very host

    def describe(self) -> str:
        via = f"route via {self.ifname or '?'}"
        return via + (f" gateway {self.gateway}" if self.gateway else "")


def parse_route(remote: str, route_msgs: Sequence[Any], local: Sequence[LocalAddress],
                names: Mapping[int, str] | None = None) -> Route | str:
    """The answer of pyroute2's route("get", dst=remote) as a Route, or why there is none (a short string).
    `local`: parse_addresses() of this host; `names`: interface index -> name (default: from `local`)."""
    if not route_msgs:
        return "no route"
    msg = route_msgs[0]
    rtype = msg["type"]
    oif = msg.get_attr("RTA_OIF")
    names = names if names is not None else {a.index: a.ifname for a in local}
    ifname = names.get(oif, f"if{oif}") if oif is not None else None
    if rtype == RTN_LOCAL:
        return Route(normalize(remote), None, ifname, is_local=True)
    if rtype != RTN_UNICAST:
        return f"no route (route type {rtype})"
    src = msg.get_attr("RTA_PREFSRC")
    if not src:  # no preferred source: an address of the same family on the outgoing interface
        version = getattr(_ip(remote), "version", None)
        on_oif = [a for a in local if a.index == oif and a.usable and getattr(_ip(a.address), "version", 0) == version]
        on_oif.sort(key=lambda a: a.link_local)
        src = on_oif[0].address if on_oif else None
    if not src:
        return f"no local address on {ifname or 'the outgoing interface'}"
    gateway = msg.get_attr("RTA_GATEWAY")
    return Route(normalize(remote), normalize(src), ifname, normalize(gateway) if gateway else None)


def lookup_routes(remotes: Iterable[str]) -> dict[str, Route | str]:
    """Ask the kernel (pyroute2) for the route to each address; a string says why there is none."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    out: dict[str, Route | str] = {}
    with IPRoute() as ipr:
        links = list(ipr.get_links())
        local = parse_addresses(ipr.get_addr(), links)
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        for remote in remotes:
            try:
                msgs = ipr.route("get", dst=remote)
            except NetlinkError as exc:
                out[remote] = "no route" if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH) else \
                    f"no route ({os.strerror(exc.code)})"
                continue
            out[remote] = parse_route(remote, msgs, local, names)
    return out


@dataclass(frozen=True)
class Choice:
    remote: str
    take: bool
    why: str  # for a path taken: where its route goes; for an address skipped: why
    local: str | None = None
    over_limit: bool = False  # skipped only because the session has no room for more connections


def plan_extra_paths(advertised: Sequence[str], in_use: Mapping[str, int],
                     routes: Mapping[str, Route | str], room: int) -> list[Choice]:
    """Which advertised addresses become paths. `in_use`: remote address -> a path id already using it;
    `routes`: lookup_routes() of the addresses not in use; `room`: how many more addresses fit (connection cap)."""
    out: list[Choice] = []
    seen: set[str] = set()
    for addr in advertised:
        key = normalize(addr)
        if key in seen:
            out.append(Choice(key, False, "advertised twice"))
            continue
        seen.add(key)
        if key in in_use:
            out.append(Choice(key, False, f"already used by path {in_use[key]}"))
            continue
        route = routes.get(key, routes.get(addr, "no route"))
        if isinstance(route, str):
            out.append(Choice(key, False, route))
        elif route.is_local:
            out.append(Choice(key, False, "an address of this host (the listener is reached over loopback)"))
        elif room <= 0:
            out.append(Choice(key, False, "over the session's connection limit", route.local, over_limit=True))
        else:
            room -= 1
            out.append(Choice(key, True, f"advertised by the listener, {route.describe()}", route.local))
    return out


# --- names ------------------------------------------------------------------------------------------------------


def resolve(host: str, port: int, family: int = socket.AF_UNSPEC,
            getaddrinfo: Callable[..., list] | None = None) -> list[str]:
    """Every address of `host` (getaddrinfo order, duplicates removed); an IP literal stands for itself."""
    if is_ip(host):
        return [host]
    try:
        infos = (getaddrinfo or socket.getaddrinfo)(host, port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from None
    out = list(dict.fromkeys(normalize(str(info[4][0])) for info in infos))
    if not out:
        raise ConnectError(f"cannot resolve {host}: no address")
    return out

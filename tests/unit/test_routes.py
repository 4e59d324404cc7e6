"""Address selection for automatic paths (sctpbond.routes), fed fake pyroute2 netlink messages."""

from __future__ import annotations

import socket

import pytest

from sctpbond import routes
from sctpbond.errors import ConnectError
from sctpbond.proto.frames import MAX_ADDRS, Welcome, decode, encode
from sctpbond.routes import LocalAddress, Route, parse_addresses, parse_route, plan_extra_paths, select_advertised
from sctpbond.runtime.client import PathSpec, expand_hostnames


class Msg(dict):
    """Stands in for a pyroute2 netlink message: fields by msg[name], attributes by get_attr(name)."""

    def __init__(self, attrs: dict | None = None, **fields: object) -> None:
        super().__init__(fields)
        self.attrs = attrs or {}

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)


def link(index: int, name: str, up: bool = True, state: str = "UP") -> Msg:
    return Msg({"IFLA_IFNAME": name, "IFLA_OPERSTATE": state}, index=index, flags=0x1043 if up else 0x1002)


def addr(index: int, address: str, scope: int = 0, flags: int = 0x80, local: str | None = None) -> Msg:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    attrs = {"IFA_ADDRESS": address, "IFA_FLAGS": flags}
    if local or family == socket.AF_INET:
        attrs["IFA_LOCAL"] = local or address
    return Msg(attrs, family=family, index=index, scope=scope, flags=flags & 0xFF, prefixlen=24)


LINKS = [link(1, "lo", state="UNKNOWN"), link(2, "veth0"), link(3, "veth1"), link(4, "veth2"), link(5, "veth3"),
         link(6, "eth9", up=False, state="DOWN")]
ADDRS = [
    addr(1, "127.0.0.1", scope=254), addr(1, "::1", scope=254),
    addr(2, "10.77.0.2"), addr(3, "10.77.1.2"), addr(4, "10.77.2.2"), addr(5, "10.77.3.2"),
    addr(2, "fe80::1", scope=253), addr(3, "2001:db8::2"),
    addr(3, "2001:db8::3", flags=0x40),  # tentative: duplicate address detection still running
    addr(6, "192.0.2.7"),  # on an interface that is down
    addr(5, "10.99.0.1", local="10.99.0.2"),  # point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer's
]
LOCAL = parse_addresses(ADDRS, LINKS)


def test_parse_addresses_reads_names_state_and_flags():
    by_addr = {a.address: a for a in LOCAL}
    assert by_addr["10.77.2.2"] == LocalAddress("10.77.2.2", "veth2", 4)
    assert not by_addr["2001:db8::3"].usable  # tentative
    assert not by_addr["192.0.2.7"].usable  # interface down
    assert by_addr["fe80::1"].link_local
    assert "10.99.0.2" in by_addr and "10.99.0.1" not in by_addr


def test_wildcard_listener_advertises_its_non_loopback_addresses_of_the_family():
    assert select_advertised("10.77.0.2", ["0.0.0.0"], LOCAL) == (
        "10.77.0.2", "10.77.1.2", "10.77.2.2", "10.77.3.2", "10.99.0.2")
    assert select_advertised("2001:db8::2", ["::"], LOCAL) == ("2001:db8::2",)  # no ::1, fe80::, tentative


def test_loopback_only_for_a_client_that_came_in_over_loopback():
    """...and only loopback: it runs on the same host, where every address is reached over loopback."""
    assert select_advertised("127.0.0.1", [], LOCAL) == ("127.0.0.1",)
    assert select_advertised("::1", ["::"], LOCAL) == ("::1",)
    assert select_advertised("127.0.0.1", ["127.0.0.1", "10.77.0.2"], LOCAL) == ("127.0.0.1",)
    assert "127.0.0.1" not in select_advertised("10.77.0.2", [], LOCAL)


def test_ipv4_mapped_address_of_a_dual_stack_socket_counts_as_ipv4():
    assert select_advertised("::ffff:10.77.1.2", ["::"], LOCAL)[:2] == ("10.77.0.2", "10.77.1.2")


def test_bound_listener_advertises_its_bind_addresses_only():
    assert select_advertised("10.77.0.2", ["10.77.0.2", "10.77.3.2", "2001:db8::2"], LOCAL) == (
        "10.77.0.2", "10.77.3.2")


def test_addresses_not_read_yet_advertise_the_reached_one():
    assert select_advertised("10.77.0.2", ["0.0.0.0"], None) == ("10.77.0.2",)


def test_capped_to_what_welcome_carries():
    many = [LocalAddress(f"10.0.{i}.1", f"eth{i}", i) for i in range(40)]
    chosen = select_advertised("10.0.0.1", [], many)
    assert len(chosen) == routes.MAX_ADVERTISED == MAX_ADDRS
    welcome = Welcome(bytes(16), bytes(16), 1 << 20, 1 << 18, addresses=chosen)
    assert decode(encode(welcome)).addresses == chosen


class FakeListener:
    def __init__(self, transport: str, addrs: list[str]) -> None:
        self.transport, self._addrs = transport, addrs

    def addresses(self) -> list[tuple[str, int]]:
        return [(a, 7300) for a in self._addrs]


class FakeChannel:
    transport = "tcp"
    local = ("10.77.1.2", 7300)


def test_welcome_addresses(monkeypatch):
    listeners = [FakeListener("tcp", ["10.77.1.2", "10.77.2.2"]), FakeListener("sctp", ["10.77.3.2"])]
    # bound: the accepting listener's own addresses, no address lookup at all
    monkeypatch.setattr(routes, "local_addresses", lambda wait=None: pytest.fail("no lookup when bound"))
    assert routes.welcome_addresses(None, listeners, FakeChannel()) == ("10.77.1.2", "10.77.2.2")
    assert routes.welcome_addresses((), listeners, FakeChannel()) == ()
    assert routes.welcome_addresses(("192.0.2.1",), listeners, FakeChannel()) == ("192.0.2.1",)
    # wildcard: the host's addresses
    monkeypatch.setattr(routes, "local_addresses", lambda wait=None: LOCAL)
    assert routes.welcome_addresses(None, [FakeListener("tcp", ["0.0.0.0"])], FakeChannel())[:2] == (
        "10.77.0.2", "10.77.1.2")

    def broken(wait=None):
        raise ImportError("No module named 'pyroute2'")

    monkeypatch.setattr(routes, "local_addresses", broken)  # never breaks the handshake
    assert routes.welcome_addresses(None, [FakeListener("tcp", ["0.0.0.0"])], FakeChannel()) == ("10.77.1.2",)
    loop = FakeChannel()
    loop.local = ("127.0.0.1", 7300)  # same host: no lookup either
    assert routes.welcome_addresses(None, [FakeListener("tcp", ["0.0.0.0"])], loop) == ("127.0.0.1",)


# --- the client's side ------------------------------------------------------------------------------------------


def route_msg(rtype: int = 1, oif: int | None = 4, prefsrc: str | None = None, gateway: str | None = None) -> Msg:
    return Msg({"RTA_OIF": oif, "RTA_PREFSRC": prefsrc, "RTA_GATEWAY": gateway}, type=rtype, family=2)


CLIENT_LINKS = [link(1, "lo"), link(2, "veth0a"), link(3, "veth1a"), link(4, "veth2a"), link(5, "eth0")]
CLIENT = parse_addresses([addr(2, "10.77.0.1"), addr(3, "10.77.1.1"), addr(4, "10.77.2.1"), addr(5, "192.168.1.5"),
                          addr(4, "fe80::2", scope=253), addr(4, "2001:db8::1")], CLIENT_LINKS)


def test_parse_route_takes_the_preferred_source():
    r = parse_route("10.77.2.2", [route_msg(oif=4, prefsrc="10.77.2.1")], CLIENT)
    assert r == Route("10.77.2.2", "10.77.2.1", "veth2a")
    assert r.describe() == "route via veth2a"


def test_parse_route_without_preferred_source_uses_an_address_on_the_outgoing_interface():
    assert parse_route("10.77.2.2", [route_msg(oif=4)], CLIENT).local == "10.77.2.1"
    assert parse_route("2001:db8::9", [route_msg(oif=4)], CLIENT).local == "2001:db8::1"  # family, not fe80::
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in CLIENT_LINKS}
    assert parse_route("10.77.2.2", [route_msg(oif=1)], CLIENT, names) == "no local address on lo"


def test_parse_route_via_a_gateway_local_and_unreachable():
    r = parse_route("203.0.113.5", [route_msg(oif=5, prefsrc="192.168.1.5", gateway="192.168.1.1")], CLIENT)
    assert (r.local, r.describe()) == ("192.168.1.5", "route via eth0 gateway 192.168.1.1")
    assert parse_route("10.77.0.1", [route_msg(rtype=2, oif=1)], CLIENT).is_local
    assert parse_route("192.0.2.9", [route_msg(rtype=7, oif=None)], CLIENT) == "no route (route type 7)"
    assert parse_route("192.0.2.9", [], CLIENT) == "no route"


def test_plan_takes_each_new_routed_address_once():
    found = {
        "10.77.1.2": Route("10.77.1.2", "10.77.1.1", "veth1a"),
        "10.77.2.2": Route("10.77.2.2", "10.77.2.1", "veth2a"),
        "192.0.2.9": "no route",
        "10.77.0.1": Route("10.77.0.1", None, "lo", is_local=True),
    }
    advertised = ["10.77.0.2", "10.77.1.2", "10.77.2.2", "10.77.1.2", "192.0.2.9", "10.77.0.1"]
    plan = plan_extra_paths(advertised, {"10.77.0.2": 0}, found, room=10)
    assert [(c.remote, c.take, c.local) for c in plan] == [
        ("10.77.0.2", False, None), ("10.77.1.2", True, "10.77.1.1"), ("10.77.2.2", True, "10.77.2.1"),
        ("10.77.1.2", False, None), ("192.0.2.9", False, None), ("10.77.0.1", False, None)]
    assert plan[0].why == "already used by path 0"
    assert plan[2].why == "advertised by the listener, route via veth2a"
    assert plan[3].why == "advertised twice"
    assert plan[4].why == "no route"
    assert plan[5].why.startswith("an address of this host")


def test_plan_keeps_the_connection_limit():
    found = {f"10.77.{i}.2": Route(f"10.77.{i}.2", f"10.77.{i}.1", f"veth{i}a") for i in range(1, 4)}
    plan = plan_extra_paths(list(found), {}, found, room=2)
    assert [c.take for c in plan] == [True, True, False]
    assert plan[2].over_limit and plan[2].why == "over the session's connection limit"


def test_plan_given_pairs_count_as_used():
    """`--path 10.77.1.1=10.77.1.2` already uses 10.77.1.2: the advertised address is not dialled again."""
    found = {"10.77.1.2": Route("10.77.1.2", "10.77.1.1", "veth1a")}
    plan = plan_extra_paths(["10.77.1.2"], {"10.77.1.2": 3}, found, room=5)
    assert not plan[0].take and plan[0].why == "already used by path 3"


def fake_getaddrinfo(host, port, family=0, type=0):
    table = {"hostb": [(socket.AF_INET, "10.77.0.2"), (socket.AF_INET, "10.77.1.2"), (socket.AF_INET, "10.77.0.2"),
                       (socket.AF_INET6, "2001:db8::2")],
             "onlyone": [(socket.AF_INET, "10.77.3.2")]}
    if host not in table:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [(fam, socket.SOCK_STREAM, 6, "", (a, port)) for fam, a in table[host]
            if family in (socket.AF_UNSPEC, fam)]


def test_resolve_gives_every_address_once():
    assert routes.resolve("hostb", 7300, getaddrinfo=fake_getaddrinfo) == ["10.77.0.2", "10.77.1.2", "2001:db8::2"]
    assert routes.resolve("10.1.2.3", 7300, getaddrinfo=fake_getaddrinfo) == ["10.1.2.3"]
    with pytest.raises(ConnectError, match="cannot resolve nosuch"):
        routes.resolve("nosuch", 7300, getaddrinfo=fake_getaddrinfo)
    assert "127.0.0.1" in routes.resolve("localhost", 7300)  # the real getaddrinfo


def test_hostnames_expand_to_one_path_per_address(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    paths = expand_hostnames([PathSpec(("hostb", 7400)), PathSpec(("10.77.2.2", 7300)),
                              PathSpec(("onlyone", 7300), local="10.77.3.1")])
    assert [(p.remote, p.local, p.optional) for p in paths] == [
        (("10.77.0.2", 7400), None, True), (("10.77.1.2", 7400), None, True), (("2001:db8::2", 7400), None, True),
        (("10.77.2.2", 7300), None, False), (("10.77.3.2", 7300), "10.77.3.1", False)]
    assert paths[1].why == "hostb resolves to it, address 2 of 3"
    backup = expand_hostnames([PathSpec(("hostb", 7300), backup=True)])
    assert [p.backup for p in backup] == [True, True, True]  # each address of a backup name is a backup

"""Automatic paths: `connect` given ONE address dials every address the listener advertises in WELCOME, each from
the local address that routes to it (sctpbond.routes), over TCP between two emulated 4-NIC hosts."""

from __future__ import annotations

import pytest

from .harness import GrowthSampler, assert_ok, random_file, transfer

pytestmark = pytest.mark.netns

MiB = 1 << 20


def _links_used(side, net) -> dict[int, int]:
    """Path id -> the link whose client address its label starts with ("10.77.2.1->10.77.2.2:7300" -> 2)."""
    links = {}
    for p in side.stats["paths"]:
        local, _, remote = p["label"].partition("->")
        i = next(i for i in range(net.n_links) if local.startswith(net.addr("a", i)) or
                 remote.startswith(net.addr("a", i)))
        links[p["id"]] = i
    return links


def test_one_address_uses_all_four_links_at_their_sum(netns_topology, tmp_path, record_property):
    net = netns_topology("4x200")
    size = 256 * MiB
    up = random_file(tmp_path / "up", size)
    sampler = GrowthSampler(tmp_path / "out_l")
    try:
        res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp"],
                       listen_args=["-t", "tcp"], addrs=[net.addr("b", 0)], during=sampler.start)
    finally:
        sampler.stop()
    assert_ok(res, tmp_path, up, None)
    for side in (res.client, res.listener):
        assert len(side.stats["paths"]) == 4, side.stats["paths"]
        assert sorted(_links_used(side, net).values()) == [0, 1, 2, 3], side.stats["paths"]
    # every path carried data, and what the client put on a path is what the listener took off it
    sent = res.client.path_bytes("bytes_sent")
    assert all(b > 0 for b in sent), sent
    assert sent == res.listener.path_bytes("bytes_received")
    # the rate while all four paths carry data (10 % to 90 % of the stream written out): that the paths add up is
    # the claim here; start-up and drain are `sctpbond bench`'s business (its figures are in docs/benchmarks.md)
    total = sum(link.rate_mbit for link in net.topo.links)
    mbit = sampler.mbit_between(size // 10, size * 9 // 10)
    record_property("mbit_s", round(mbit, 1))
    record_property("session_mbit_s",
                    round(res.listener.stats["bytes_received"] * 8 / res.listener.stats["elapsed_s"] / 1e6, 1))
    record_property("wall_mbit_s", round(up.stat().st_size * 8 / res.elapsed / 1e6, 1))
    record_property("per_path_mbyte", [round(b / MiB, 1) for b in sent])
    assert mbit >= 0.85 * total, f"{mbit:.0f} Mbit/s < 0.85 x {total:g}; paths {res.client.stats['paths']}"


def test_no_auto_uses_only_the_given_path(netns_topology, tmp_path):
    net = netns_topology("4x200")
    up = random_file(tmp_path / "up", 32 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp", "--no-auto", "-v"],
                   listen_args=["-t", "tcp"], addrs=[net.addr("b", 0)])
    assert_ok(res, tmp_path, up, None)
    for side in (res.client, res.listener):
        assert len(side.stats["paths"]) == 1, side.stats["paths"]
    assert "advertised by the listener" not in res.client.stderr
    assert "skipped" not in res.client.stderr


def test_verbose_names_each_path_and_why_with_multiplier(netns_topology, tmp_path):
    """-v says which paths were chosen and why, and which advertised addresses were skipped; --multiplier
    applies to the automatic paths too."""
    net = netns_topology("2x200")
    # an address of the listener the client has no route to (the hosts have no default route)
    net.run("b", ["ip", "addr", "add", "192.0.2.9/32", "dev", "lo"], check=True)
    up = random_file(tmp_path / "up", 64 * MiB)
    down = random_file(tmp_path / "down", 16 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=down, client_args=["-t", "tcp", "-v", "-m", "2"],
                   listen_args=["-t", "tcp"], addrs=[net.addr("b", 0)])
    assert_ok(res, tmp_path, up, down)
    err = res.client.stderr
    a0, b0, a1, b1 = net.addr("a", 0), net.addr("b", 0), net.addr("a", 1), net.addr("b", 1)
    lines = err.splitlines()
    # path 0 opened the session, so its local address is known; path 1 (its second connection) is the kernel's
    assert any(line.endswith(f"path 0 {a0} -> {b0} (given on the command line)") for line in lines), err
    assert any(line.endswith(f"path 1 any -> {b0} (given on the command line)") for line in lines), err
    for pid in (2, 3):
        want = f"path {pid} {a1} -> {b1} (advertised by the listener, route via {net.ifname('a', 1)})"
        assert any(line.endswith(want) for line in lines), err
    assert any(line.endswith(f"skipped {b0}: already used by path 0") for line in lines), err
    assert any(line.endswith("skipped 192.0.2.9: no route") for line in lines), err
    links = _links_used(res.client, net)
    assert links == {0: 0, 1: 0, 2: 1, 3: 1}, res.client.stats["paths"]
    assert all(b > 0 for b in res.client.path_bytes("bytes_sent")), res.client.stats["paths"]


def test_bound_listener_advertises_only_its_bind_addresses(netns_topology, tmp_path):
    net = netns_topology("4x200")
    up = random_file(tmp_path / "up", 32 * MiB)
    binds = [f"--bind={net.addr('b', i)}" for i in (0, 2)]
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp", "-v"],
                   listen_args=["-t", "tcp", *binds], addrs=[net.addr("b", 0)])
    assert_ok(res, tmp_path, up, None)
    assert sorted(_links_used(res.client, net).values()) == [0, 2], res.client.stats["paths"]
    assert "skipped" not in res.client.stderr.replace(f"skipped {net.addr('b', 0)}:", "")

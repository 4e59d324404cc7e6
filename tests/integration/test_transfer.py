"""End-to-end transfers over TCP paths between two emulated multi-NIC hosts (network namespaces)."""

from __future__ import annotations

import pytest

from .harness import assert_ok as _check_ok
from .harness import random_file, transfer, wait_for_bytes

pytestmark = pytest.mark.netns

MiB = 1 << 20


@pytest.mark.parametrize("topo", ["2x200", "4x200"])
def test_duplex_256MiB_each_way_uses_every_path(netns_topology, tmp_path, topo):
    net = netns_topology(topo)
    up = random_file(tmp_path / "up", 256 * MiB)
    down = random_file(tmp_path / "down", 256 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=down, client_args=["-t", "tcp"],
                   listen_args=["-t", "tcp"])
    _check_ok(res, tmp_path, up, down)
    n = len(net.topo.links)
    for side, sent, received in ((res.client, up, down), (res.listener, down, up)):
        assert side.stats["bytes_sent"] == sent.stat().st_size
        assert side.stats["bytes_received"] == received.stat().st_size
        assert len(side.stats["paths"]) == n
        # every path carried data in both directions, and per-path bytes add up (at least) to the stream
        assert all(b > 0 for b in side.path_bytes("bytes_sent")), side.stats["paths"]
        assert all(b > 0 for b in side.path_bytes("bytes_received")), side.stats["paths"]
        assert sum(side.path_bytes("bytes_sent")) >= sent.stat().st_size
        # TCP_INFO's RTT reached the core (it sizes the path's quota): the links' queues, well under a second
        assert all(p["net_rtt_ms"] is not None and 0 < p["net_rtt_ms"] < 1000 for p in side.stats["paths"])
    # what one side sent on a path is what the other received on it
    assert res.client.path_bytes("bytes_sent") == res.listener.path_bytes("bytes_received")


def test_unequal_links_share_by_rate(netns_topology, tmp_path):
    net = netns_topology("4-unequal")  # 400/200/100/50 Mbit/s
    up = random_file(tmp_path / "up", 128 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp"])
    _check_ok(res, tmp_path, up, None)
    sent = res.client.path_bytes("bytes_sent")
    assert all(b > 0 for b in sent)
    # not round-robin: the 400 Mbit/s path carries several times what the 50 Mbit/s one does
    assert sent[0] > 3 * sent[3], sent
    assert sent[0] > sent[1] > sent[2] > sent[3], sent


def test_multiplier_opens_k_connections_per_path(netns_topology, tmp_path):
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 64 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp", "-m", "3"])
    _check_ok(res, tmp_path, up, None)
    assert len(res.client.stats["paths"]) == 6
    assert all(b > 0 for b in res.client.path_bytes("bytes_sent"))


def test_pinned_local_addresses(netns_topology, tmp_path):
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 32 * MiB)
    pins = [f"--path={net.addr('a', i)}={net.addr('b', i)}" for i in range(2)]
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp", *pins], addrs=[])
    _check_ok(res, tmp_path, up, None)
    labels = [p["label"] for p in sorted(res.client.stats["paths"], key=lambda p: p["id"])]
    assert labels[0].startswith(net.addr("a", 0)) and labels[1].startswith(net.addr("a", 1)), labels


def test_link_down_mid_transfer_resends_on_survivors(netns_topology, tmp_path):
    net = netns_topology("4x200")
    up = random_file(tmp_path / "up", 192 * MiB)

    def cut(net, client, listener):
        wait_for_bytes(tmp_path / "out_l", 16 * MiB, client)  # mid-stream on every path, not at a fixed time
        net.set_link(1, False)

    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp"], during=cut)
    _check_ok(res, tmp_path, up, None)
    path1 = next(p for p in res.client.stats["paths"] if p["id"] == 1)
    assert not path1["alive"] and path1["down_reason"], path1
    assert res.client.stats["bytes_acked"] == up.stat().st_size

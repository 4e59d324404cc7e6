"""Transfers over kernel SCTP between emulated multi-NIC hosts. Runs where the kernel has SCTP: inside the VM
(tests/vm/run.sh) on hosts without it. Every test checks sha256 and both exit codes, and that the bytes really
travelled as SCTP DATA chunks on one association per path."""

from __future__ import annotations

import re
import threading

import pytest

from sctpbond.lab.topology import LinkSpec, Topology
from sctpbond.transport import sctp_support
from tests.integration.harness import assert_ok, random_file, transfer, wait_for_bytes

pytestmark = [pytest.mark.sctp, pytest.mark.netns]
MiB = 1 << 20

if not sctp_support()[0]:
    pytestmark.append(pytest.mark.skip(reason="kernel without SCTP: run via tests/vm/run.sh (scripts/test.sh does)"))


def snmp(net, host: str) -> dict[str, int]:
    text = net.run(host, ["cat", "/proc/net/sctp/snmp"], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, re.M)}


def data_chunks(counters: dict[str, int], direction: str) -> int:
    return counters.get(f"Sctp{direction}OrderChunks", 0) + counters.get(f"Sctp{direction}UnorderChunks", 0)


def _paths(side):
    return sorted(side.stats["paths"], key=lambda p: p["id"])


@pytest.mark.parametrize("topo", ["2x20", "4x20"])
def test_sctp_duplex_over_every_link(netns_topology, tmp_path, topo):
    net = netns_topology(topo)
    n = len(net.topo.links)
    up = random_file(tmp_path / "up", 12 * MiB)
    down = random_file(tmp_path / "down", 12 * MiB)
    before_a, before_b = snmp(net, "a"), snmp(net, "b")
    # --dead-after: the VM's emulated CPU under load can delay heartbeats by seconds; 64 KiB chunks: enough DATA
    # messages on every association to see them striped over all its streams
    slack = ["--dead-after", "5", "--chunk", "64K"]
    res = transfer(net, tmp_path, to_listener=up, to_client=down, client_args=["-t", "sctp", *slack],
                   listen_args=["-t", "sctp", *slack], timeout=180)
    assert_ok(res, tmp_path, up, down)
    after_a, after_b = snmp(net, "a"), snmp(net, "b")
    # the bytes crossed as SCTP DATA chunks, both ways (at least one chunk per 1500-byte packet of payload)
    assert data_chunks(after_a, "Out") - data_chunks(before_a, "Out") > up.stat().st_size // 1500
    assert data_chunks(after_b, "Out") - data_chunks(before_b, "Out") > down.stat().st_size // 1500
    assert data_chunks(after_b, "In") - data_chunks(before_b, "In") > up.stat().st_size // 1500
    # one association per path (more only if a path re-joined: the emulated CPU can stall a path past --dead-after)
    assert after_a["SctpActiveEstabs"] - before_a.get("SctpActiveEstabs", 0) >= n
    for side in (res.client, res.listener):
        paths = _paths(side)
        assert len(paths) == n and all(p["transport"] == "sctp" for p in paths)
        assert all(p["bytes_sent"] > 0 and p["bytes_received"] > 0 for p in paths), paths
        # each association's own srtt reached the core (it sizes the path's quota): a few ms on these links
        assert all(p["net_rtt_ms"] is not None and 0 < p["net_rtt_ms"] < 1000 for p in paths), paths
    primaries = {p["transport_info"]["primary"] for p in _paths(res.client)}
    assert len(primaries) == n  # n distinct associations, one on each link
    for i, p in enumerate(_paths(res.client)):
        info = p["transport_info"]
        # each association's primary is its own link, and it knows the listener's other addresses for failover
        assert info["primary"] == net.addr("b", i), info
        assert set(info["peer_addresses"]) >= {net.addr("b", j) for j in range(n)}, info
    checked = 0
    for side in (res.client, res.listener):
        for p in _paths(side):
            info = p["transport_info"]
            data_streams = {str(s) for s in range(1, info["in_streams"])}
            assert info["in_streams"] >= 2
            assert "0" in info["streams_seen"], info  # control frames on stream 0
            if p["chunks_received"] >= 2 * len(data_streams):
                # stream ids really arrive as sent: DATA striped over every negotiated data stream
                assert data_streams <= set(info["streams_seen"]), info
                checked += 1
    assert checked >= n, "too few DATA messages per association to check the stream striping"


def test_sctp_link_down_kernel_fails_over_inside_the_association(netns_topology, tmp_path):
    net = netns_topology("2x20")
    up = random_file(tmp_path / "up", 16 * MiB)

    def cut(net, client, listener):
        def run():  # once data flows: an emulated CPU can take longer than a fixed delay to open the session
            wait_for_bytes(tmp_path / "out_l", 2 * MiB, client)
            net.set_link(0, False)
        threading.Thread(target=run, daemon=True).start()

    # a generous --dead-after leaves the failover to the kernel: the association of path 0 must move to link 1
    res = transfer(net, tmp_path, to_listener=up, to_client=None, during=cut, timeout=180,
                   client_args=["-t", "sctp", "--dead-after", "20"], listen_args=["-t", "sctp", "--dead-after", "20"])
    assert_ok(res, tmp_path, up)
    path0 = _paths(res.client)[0]
    # never failed at our level while data moved: the kernel kept the association going. Only the listener's
    # closing SHUTDOWN may reach a path a moment before the final ACK arrives on another one.
    elapsed = res.client.stats["elapsed_s"]
    assert path0["alive"] or path0["down_at_s"] >= elapsed - 1.0, (path0["down_reason"], path0["down_at_s"], elapsed,
                                                                  res.client.stderr[-1500:])
    assert f"->{net.addr('b', 0)}:" in path0["label"], path0  # the association that started on link 0
    events = " | ".join(path0["transport_info"]["events"])
    # the kernel noticed: the dead address was reported unreachable, or another address was made primary
    moved = (f"peer address {net.addr('b', 0)} unreachable" in events
             or f"peer address {net.addr('b', 1)} made-primary" in events)
    assert moved, events


def test_sctp_unequal_delays(netns_topology, tmp_path):
    topo = Topology("delays", "1 ms and 25 ms", (LinkSpec(20, delay_ms=1), LinkSpec(20, delay_ms=25)))
    net = netns_topology(topo)
    up = random_file(tmp_path / "up", 12 * MiB)
    down = random_file(tmp_path / "down", 4 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=down, client_args=["-t", "sctp"],
                   listen_args=["-t", "sctp"], timeout=180)
    assert_ok(res, tmp_path, up, down)
    assert all(p["bytes_sent"] > 0 for p in _paths(res.client))


def test_sctp_auto_transport_picks_sctp(netns_topology, tmp_path):
    net = netns_topology("2x20")
    up = random_file(tmp_path / "up", 2 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=[], timeout=120)
    assert_ok(res, tmp_path, up)
    assert {p["transport"] for p in res.client.stats["paths"]} == {"sctp"}
    assert "using TCP" not in res.client.stderr


def test_doctor_sees_kernel_sctp():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "sctpbond", "doctor"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[ok] kernel SCTP    available" in out.stdout, out.stdout
    assert "auto picks sctp" in out.stdout

"""--backup and --redundant over TCP paths in network namespaces: what the links carried (interface counters),
byte-exact streams and both exit codes; a live stream's worst block latency when a link is blackholed."""

from __future__ import annotations

import re
import threading
import time

import pytest

from sctpbond.lab.topology import LinkSpec, Topology, link_counters

from . import harness
from .harness import assert_ok, random_file, transfer, wait_for_bytes

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]
MiB = 1 << 20
TWO_AND_A_BACKUP = Topology("2x200+50", "two 200 Mbit/s links and a 50 Mbit/s backup",
                            (LinkSpec(200), LinkSpec(200), LinkSpec(50)))


def rx_bytes(net, host: str) -> dict[int, int]:
    text = net.run(host, ["cat", "/proc/net/dev"], capture_output=True, text=True, check=True).stdout
    counters = link_counters(text)
    return {i: counters[net.ifname(host, i)][0] for i in range(len(net.topo.links))}


def path_stats(side, pid: int) -> dict:
    return next(p for p in side.stats["paths"] if p["id"] == pid)


def backup_args(net) -> tuple[list[str], list[str]]:
    return ["-t", "tcp", "--no-auto", "-v", "--backup", net.addr("b", 2)], [net.addr("b", 0), net.addr("b", 1)]


def test_a_backup_link_carries_nothing_while_the_others_work(netns_topology, tmp_path):
    net = netns_topology(TWO_AND_A_BACKUP)
    size = 64 * MiB
    up, down = random_file(tmp_path / "up", size), random_file(tmp_path / "down", 16 * MiB)
    args, addrs = backup_args(net)
    before = {h: rx_bytes(net, h) for h in "ab"}
    res = transfer(net, tmp_path, to_listener=up, to_client=down, client_args=args, addrs=addrs,
                   listen_args=["-v"])
    assert_ok(res, tmp_path, up, down)
    after = {h: rx_bytes(net, h) for h in "ab"}
    on_backup = {h: after[h][2] - before[h][2] for h in "ab"}  # both directions of the backup link
    print(f"FIGURE backup idle: {on_backup} bytes on the backup link for {size + 16 * MiB} bytes of data")
    assert on_backup["b"] < size // 100 and on_backup["a"] < size // 100, on_backup
    for side in (res.client, res.listener):
        backup = path_stats(side, 2)
        assert backup["backup"] and backup["alive"] and backup["bytes_sent"] == 0, backup
    assert re.search(r"path 2 backup ", res.client.stderr), res.client.stderr  # -v marks it on both sides
    assert "(backup)" in res.listener.stderr, res.listener.stderr


def test_the_backup_carries_the_stream_while_the_others_are_down(netns_topology, tmp_path):
    """Links 0 and 1 blackholed for 3 s mid-transfer: the backup carries the stream meanwhile; once they are back
    (re-dialled), new data leaves the backup again."""
    net = netns_topology(TWO_AND_A_BACKUP)
    size = 96 * MiB
    up = random_file(tmp_path / "up", size)
    args, addrs = backup_args(net)
    windows: dict[str, dict[int, int]] = {}

    def outage(net, client, listener) -> None:
        def run() -> None:
            wait_for_bytes(tmp_path / "out_l", 8 * MiB, client)
            for i in (0, 1):
                net.blackhole(i, True)
            time.sleep(3.0)
            for i in (0, 1):
                net.blackhole(i, False)
            time.sleep(3.0)  # re-dialled by now (SYN retries, then the join)
            windows["late"] = rx_bytes(net, "b")
            time.sleep(1.0)
            if client.poll() is None:
                windows["later"] = rx_bytes(net, "b")
        threading.Thread(target=run, daemon=True).start()

    res = transfer(net, tmp_path, to_listener=up, to_client=None,
                   client_args=[*args, "--limit-rate", "100Mbit"], addrs=addrs, during=outage, timeout=180)
    assert_ok(res, tmp_path, up)
    carried = path_stats(res.client, 2)["bytes_sent"]
    print(f"FIGURE backup takeover: the backup carried {carried / MiB:.1f} MiB of {size / MiB:.0f} MiB")
    assert 4 * MiB <= carried <= size // 2, carried  # about 3 s at its 50 Mbit/s
    assert "re-joined" in res.client.stderr, res.client.stderr
    assert "later" in windows, "the transfer ended before the regular paths were back: nothing checked after"
    back = {i: windows["later"][i] - windows["late"][i] for i in range(3)}
    assert back[2] < (back[0] + back[1]) // 20, back  # the regular paths have the stream again


def test_redundant_streaming_does_not_stall_when_a_link_is_blackholed(netns_topology, tmp_path):
    """40 Mbit/s of timestamped 64 KiB blocks for 8 s over two 200 Mbit/s links; link 1 blackholed 2 s in.
    Without --redundant the blocks on link 1 wait for the stale detection and the resend; with it, their copies
    on link 0 arrive in time."""
    net = netns_topology("2x200")
    worst = {}
    for redundant in (False, True):
        args = ["-t", "tcp", "--no-auto", *(["--redundant"] if redundant else []), net.addr("b", 0), net.addr("b", 1)]
        try:
            got = harness.live_stream(net, tmp_path, args=args, fault=lambda: net.blackhole(1, True), rate_mbit=40,
                                      seconds=8, fault_after=2.0)
        finally:
            net.blackhole(1, False)
        worst[redundant] = max(got.late_ms)
    print(f"FIGURE live stream, link blackholed: worst block {worst[False]:.0f} ms, "
          f"{worst[True]:.0f} ms with --redundant")
    assert worst[True] < 150, worst
    assert worst[False] > 2 * worst[True], worst  # the stall --redundant removes was there to remove

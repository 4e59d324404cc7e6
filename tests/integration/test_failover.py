"""The fault matrix over TCP paths: every case moves >= 128 MiB and checks sha256 and both exit codes."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from sctpbond.lab.topology import LinkSpec, Topology

from .harness import SCTPBOND, random_file, stop, transfer, wait_for_bytes, wait_listening
from .harness import assert_ok as _ok

pytestmark = pytest.mark.netns
MiB = 1 << 20
SIZE = 128 * MiB


def _path(side, pid):
    return next(p for p in side.stats["paths"] if p["id"] == pid)


def _later(tmp_path, client, delay, fn, *args):
    """fn(*args) `delay` s after the first 4 MiB arrived: timed from the data, not from a start-up that a loaded
    machine can stretch past any fixed delay."""
    def run():
        wait_for_bytes(tmp_path / "out_l", 4 * MiB, client)
        time.sleep(delay)
        fn(*args)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture
def up(tmp_path):
    return random_file(tmp_path / "up", SIZE)


def test_blackhole_is_detected_and_its_data_resent(netns_topology, tmp_path, up):
    net = netns_topology("4x200")
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp", "-v"],
                   during=lambda net, client, listener: _later(tmp_path, client, 0.3, net.blackhole, 2, True))
    _ok(res, tmp_path, up)
    path = _path(res.client, 2)
    assert not path["alive"] and "no answer" in path["down_reason"], path
    assert res.client.stats["resent_bytes"] > 0


def test_flapping_link(netns_topology, tmp_path, up):
    net = netns_topology("4x200")
    stop = threading.Event()

    def flap():
        state = True
        while not stop.wait(0.5):
            state = not state
            net.set_link(0, state)
        net.set_link(0, True)

    def during(net, client, listener):
        threading.Thread(target=flap, daemon=True).start()

    try:
        res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp"], during=during)
    finally:
        stop.set()
    _ok(res, tmp_path, up)


def test_two_percent_loss_on_one_path(netns_topology, tmp_path, up):
    net = netns_topology("4x200")
    net.set_loss(1, 2.0)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp"])
    _ok(res, tmp_path, up)
    sent = [p["bytes_sent"] for p in sorted(res.client.stats["paths"], key=lambda p: p["id"])]
    assert all(b > 0 for b in sent)


def test_one_slow_path_beside_fast_ones(netns_topology, tmp_path, up):
    topo = Topology("slow1", "10 Mbit/s beside 3 x 200", (LinkSpec(10),) + (LinkSpec(200),) * 3)
    net = netns_topology(topo)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp"])
    _ok(res, tmp_path, up)
    sent = [p["bytes_sent"] for p in sorted(res.client.stats["paths"], key=lambda p: p["id"])]
    assert 0 < sent[0] < min(sent[1:]) / 5, sent
    # the slow path does not hold the transfer back to 4 x 10 Mbit/s: 128 MiB at 3 x 200 takes ~2 s
    assert res.client.stats["send_mbit_s"] > 200, res.client.stats["send_mbit_s"]
    assert res.listener.stats["peak_reorder_bytes"] <= 64 * MiB


def test_two_of_four_links_down_at_once(netns_topology, tmp_path, up):
    net = netns_topology("4x200")

    def during(net, client, listener):
        def both():
            net.set_link(0, False)
            net.set_link(3, False)
        _later(tmp_path, client, 0.3, both)

    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp"], during=during)
    _ok(res, tmp_path, up)
    assert not _path(res.client, 0)["alive"] and not _path(res.client, 3)["alive"]


def test_path_down_at_start_joins_when_it_comes_up(netns_topology, tmp_path, up):
    net = netns_topology("4x200")
    net.set_link(3, False)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp", "-v"],
                   during=lambda net, client, listener: _later(tmp_path, client, 0.3, net.set_link, 3, True))
    _ok(res, tmp_path, up)
    path3 = _path(res.client, 3)
    assert path3["alive"] and path3["bytes_sent"] > 0, path3
    assert "joined after" in res.client.stderr


def test_link_comes_back_and_rejoins(netns_topology, tmp_path):
    net = netns_topology("2x200")  # 256 MiB at 2 x 200 Mbit/s: ~6 s, time enough to re-join and carry data
    up = random_file(tmp_path / "up", 256 * MiB)

    def during(net, client, listener):
        _later(tmp_path, client, 0.0, net.set_link, 1, False)
        _later(tmp_path, client, 2.0, net.set_link, 1, True)  # down longer than --dead-after (1.5 s): the path fails

    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["-t", "tcp", "-v"], during=during)
    _ok(res, tmp_path, up)
    assert "path 1 (" in res.client.stderr and "re-joined after" in res.client.stderr, res.client.stderr
    path1 = _path(res.client, 1)
    # counters restart with the new connection: bytes here were carried after the re-join
    assert path1["alive"] and path1["bytes_sent"] > 0, path1


def _slow_feeder():
    # a stream that is not finished when the peer is killed (16 MiB/s)
    return subprocess.Popen(["sh", "-c", "while :; do head -c 1048576 /dev/urandom; sleep 0.06; done"],
                            stdout=subprocess.PIPE)


@pytest.mark.parametrize("victim", ["listener", "client"])
def test_killed_peer_fails_the_survivor(netns_topology, tmp_path, victim):
    net = netns_topology("4x200")
    out = tmp_path / "out"
    listener = net.popen("b", SCTPBOND + ["listen", "-t", "tcp", "-N", "-o", str(out)], stdin=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    feeder = _slow_feeder()
    client = None
    try:
        wait_listening(net, "b", 7300)
        client = net.popen("a", SCTPBOND + ["connect", "-t", "tcp", "-o", "/dev/null"]
                           + [net.addr("b", i) for i in range(4)], stdin=feeder.stdout, stderr=subprocess.PIPE,
                           text=True)
        feeder.stdout.close()
        wait_for_bytes(out, 2 * MiB, client)  # mid-stream, however slowly the machine starts the processes
        dead, survivor = (listener, client) if victim == "listener" else (client, listener)
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        t0 = time.monotonic()
        _, err = survivor.communicate(timeout=30)
        assert survivor.returncode == 1, err
        assert time.monotonic() - t0 < 10, "the survivor must notice within a few seconds"
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("sctpbond: error: transfer failed"), err
        if victim == "client":
            assert "received" in last and out.stat().st_size > 0
    finally:
        feeder.kill()
        stop(listener, client)


def test_all_paths_dead_both_sides_give_up_after_path_timeout(netns_topology, tmp_path):
    net = netns_topology("2x200")
    feeder = _slow_feeder()
    out = tmp_path / "out"
    args = ["-t", "tcp", "--path-timeout", "3", "--dead-after", "1"]
    listener = net.popen("b", SCTPBOND + ["listen", "-N", "-o", str(out), *args], stdin=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    client = None
    try:
        wait_listening(net, "b", 7300)
        client = net.popen("a", SCTPBOND + ["connect", "-o", "/dev/null", *args, net.addr("b", 0), net.addr("b", 1)],
                           stdin=feeder.stdout, stderr=subprocess.PIPE, text=True)
        feeder.stdout.close()
        wait_for_bytes(out, 2 * MiB, client)
        net.blackhole(0, True)
        net.blackhole(1, True)
        t0 = time.monotonic()
        _, cerr = client.communicate(timeout=30)
        _, lerr = listener.communicate(timeout=30)
        assert time.monotonic() - t0 < 15
        for rc, err in ((client.returncode, cerr), (listener.returncode, lerr)):
            assert rc == 1, err
            last = err.strip().splitlines()[-1]
            assert last.startswith("sctpbond: error: transfer failed: no path came back"), err
            assert "Traceback" not in err
        assert "output incomplete" in lerr.strip().splitlines()[-1]
        assert "bytes sent were acknowledged" in cerr.strip().splitlines()[-1]
    finally:
        feeder.kill()
        stop(listener, client)

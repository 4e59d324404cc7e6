"""Faults on kernel-SCTP paths: a blackholed path, a flapping link, a lossy link. Runs where the kernel has SCTP:
inside the VM (tests/vm/run.sh) on hosts without it. Every case moves random data with `--transport sctp`, checks
sha256 and both exit codes, and checks from counters outside sctpbond (nftables, /proc/net/dev, the kernel's SCTP
MIB) that the fault really hit the transfer and was handled."""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import threading
import time
from pathlib import Path

import pytest

from sctpbond.lab.topology import link_counters
from sctpbond.transport import sctp_support
from tests.integration import harness
from tests.integration.harness import assert_ok, random_file, transfer, wait_for_bytes

pytestmark = [pytest.mark.sctp, pytest.mark.netns, pytest.mark.timeout(240)]
MiB = 1 << 20
SCTP = ["-t", "sctp", "-v"]

if not sctp_support()[0]:
    pytestmark.append(pytest.mark.skip(reason="kernel without SCTP: run via tests/vm/run.sh (scripts/test.sh does)"))


@pytest.fixture(autouse=True)
def _patient_listener_start(monkeypatch):
    """transfer() gives the listener 30 s to start listening; under software emulation on a busy host, starting
    Python and importing sctpbond over 9p alone took longer than that (seen in the first test of a VM run)."""
    monkeypatch.setattr(harness, "wait_listening", functools.partial(harness.wait_listening, timeout=120))


# --- counters read from the kernel, outside sctpbond ------------------------------------------------------------


def snmp(net, host: str) -> dict[str, int]:
    text = net.run(host, ["cat", "/proc/net/sctp/snmp"], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, re.MULTILINE)}


def rx_bytes(net, host: str, i: int, pid: int | None = None) -> int:
    """Bytes the veth end of link i has received (counted by the driver, before the nftables drop). With the pid of
    a process inside the host, read its /proc/<pid>/net/dev directly: no process to start, so no delay."""
    if pid is not None:
        text = Path(f"/proc/{pid}/net/dev").read_text()
    else:
        text = net.run(host, ["cat", "/proc/net/dev"], capture_output=True, text=True, check=True).stdout
    counters = link_counters(text)
    if net.ifname(host, i) not in counters:
        raise AssertionError(f"no {net.ifname(host, i)} in /proc/net/dev of host {host}")
    return counters[net.ifname(host, i)][0]


def nft_dropped(net, host: str, chain: str) -> int:
    """Packets dropped so far by the counter rule in chain bh<i> / loss<i> of the topology's nftables table."""
    out = net.run(host, ["nft", "list", "chain", "inet", "sctpbond", chain], capture_output=True, text=True,
                  check=True).stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


def open_fifo_writer(fifo: Path, proc, timeout: float = 90.0) -> int:
    """Open the write end of a FIFO once `proc` has opened the read end (never blocks forever if it died)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


def _stderr(res) -> str:
    return f"client:\n{res.client.stderr}\nlistener:\n{res.listener.stderr}"


def _path(side, pid):
    return next(p for p in side.stats["paths"] if p["id"] == pid)


def _report(record_property, what: str) -> None:
    print(what)  # shown with -rP / -s; also in the junit XML as a property
    record_property("outcome", what)


# --- the cases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [(), tuple(harness.UNPRIVILEGED)], ids=["root", "unprivileged"])
def test_sctp_blackhole_mid_transfer(netns_topology, tmp_path, record_property, prefix):
    """Path 0's link silently drops everything in both directions while it carries data. Two correct outcomes: the
    kernel moves association 0 to link 1 (it is bound to every local address and knows every listener address)
    before our heartbeat silence fires, or sctpbond declares path 0 dead and resends its data on path 1. Also as
    an ordinary user (no CAP_NET_ADMIN: socket buffers capped by net.core.wmem_max)."""
    net = netns_topology("2x20")
    size = 16 * MiB
    up = random_file(tmp_path / "up", size)
    # The client reads a FIFO fed from here, so the cut lands mid-transfer however slowly the emulated VM starts
    # processes (one `nft` run there can take seconds): 3 MiB first; then, while the blackhole goes on, a trickle
    # that keeps both paths busy; the rest only once link 0 is dark on both ends.
    fifo = tmp_path / "up.fifo"
    os.mkfifo(fifo)
    at_cut: dict[str, float] = {}
    fed_all = threading.Event()

    def cut(listener):
        net.blackhole(0, True)
        # driver counters, read once link 0 drops on both ends: link 0's count from now on is only of packets
        # that nftables drops, so at_cut["link0_rx_b"] bounds from above what link 0 ever delivered
        at_cut["link0_rx_b"] = rx_bytes(net, "b", 0, listener.pid)
        at_cut["link1_rx_b"] = rx_bytes(net, "b", 1, listener.pid)
        at_cut["t"] = time.monotonic()

    def feed(client, listener):
        fd = open_fifo_writer(fifo, client)
        with open(up, "rb") as src, os.fdopen(fd, "wb", buffering=0) as dst:
            dst.write(src.read(3 * MiB))
            wait_for_bytes(tmp_path / "out_l", 2 * MiB, client)
            cutter = threading.Thread(target=cut, args=(listener,), daemon=True)
            cutter.start()
            while cutter.is_alive() and client.poll() is None:
                if src.tell() < 8 * MiB:  # a loaded host can take long to cut: keep most of the stream for after
                    dst.write(src.read(64 << 10))
                time.sleep(0.1)
            at_cut["fed_before"] = src.tell()
            while block := src.read(1 << 20):
                dst.write(block)
        fed_all.set()

    def during(net, client, listener):
        threading.Thread(target=feed, args=(client, listener), daemon=True).start()

    res = transfer(net, tmp_path, to_listener=fifo, to_client=None, timeout=150, client_args=SCTP,
                   listen_args=SCTP, during=during, prefix=prefix)
    done = time.monotonic()
    assert fed_all.is_set() and "t" in at_cut, (at_cut, _stderr(res))
    assert_ok(res, tmp_path, up)
    if prefix:  # each side said once why its buffers are small, and how to lift the limit
        for side in (res.client, res.listener):
            assert side.stderr.count("sysctl -w net.core.wmem_max=") == 1, side.stderr
            limit = 2 * int(Path("/proc/sys/net/core/wmem_max").read_text())
            assert all(p["transport_info"]["sndbuf"] <= limit for p in side.stats["paths"]), side.stats
    # the cut came mid-transfer: most of the stream was still to be sent once link 0 was dark
    assert size - at_cut["fed_before"] >= 6 * MiB, at_cut
    # the blackhole bit: packets of the transfer were dropped on link 0, in both directions
    assert nft_dropped(net, "b", "bh0") > 0 and nft_dropped(net, "a", "bh0") > 0, (at_cut, _stderr(res))
    # link 0 carried nothing once dark: what had not crossed it by then crossed link 1 (driver counters include
    # headers and resends, so this is a lower bound on link 1's share)
    link1_total = rx_bytes(net, "b", 1)
    assert link1_total + at_cut["link0_rx_b"] >= size, (link1_total, at_cut)
    assert link1_total - at_cut["link1_rx_b"] >= size - at_cut["fed_before"], (link1_total, at_cut)

    path0 = _path(res.client, 0)
    events = " | ".join(path0.get("transport_info", {}).get("events", []))
    ours = re.search(r"path 0 \([^)]*\) down: ", res.client.stderr) is not None
    kernel = f"peer address {net.addr('b', 0)} unreachable" in events
    if ours:
        # sctpbond failed the path on heartbeat silence and resent what it had swallowed
        assert res.client.stats["resent_bytes"] > 0, (res.client.stats, _stderr(res))
        how = (f"sctpbond declared path 0 dead ({path0['down_reason'] or 're-joined since'}) and resent "
               f"{res.client.stats['resent_bytes']} bytes")
        if kernel:
            how += "; the kernel also reported the address unreachable"
    else:
        # the association survived: the kernel retransmitted on link 1 and kept path 0 alive
        assert kernel, f"neither sctpbond nor the kernel noticed the blackhole: {events}\n{_stderr(res)}"
        assert path0["alive"], path0
        how = (f"the kernel failed over inside association 0 (peer address {net.addr('b', 0)} unreachable); "
               f"path 0 stayed alive, resent_bytes={res.client.stats['resent_bytes']}")
    downs = [ln for ln in res.client.stderr.splitlines() if " down: " in ln]
    _report(record_property, f"blackhole: {how}; {size >> 20} MiB in {res.elapsed:.1f} s, cut after "
            f"{at_cut['fed_before'] / MiB:.1f} MiB were fed, {done - at_cut['t']:.1f} s before the end; "
            f"client path downs: {downs}")


def test_sctp_flapping_link(netns_topology, tmp_path, record_property):
    """Link 0 goes down and up every 0.5 s for the whole duplex transfer, from the moment the client starts."""
    net = netns_topology("2x20")
    up = random_file(tmp_path / "up", 8 * MiB)
    down = random_file(tmp_path / "down", 2 * MiB)
    stop = threading.Event()
    toggles: list[float] = []  # when link 0 changed state
    flowing: list[float] = []  # when the first 256 KiB had arrived

    def flap():
        state, t0 = True, time.monotonic()
        while not stop.wait(max(0.0, t0 + 0.5 * (len(toggles) + 1) - time.monotonic())):
            state = not state
            net.set_link(0, state)
            toggles.append(time.monotonic())
        if not state:
            net.set_link(0, True)

    def watch_flow(client):
        wait_for_bytes(tmp_path / "out_l", 256 << 10, client)
        flowing.append(time.monotonic())

    flapper = threading.Thread(target=flap, daemon=True)

    def during(net, client, listener):
        flapper.start()
        threading.Thread(target=watch_flow, args=(client,), daemon=True).start()

    try:
        res = transfer(net, tmp_path, to_listener=up, to_client=down, timeout=150, client_args=SCTP,
                       listen_args=SCTP, during=during)
        ended = time.monotonic()
    finally:
        stop.set()
        if flapper.is_alive():
            flapper.join(timeout=20)
    assert not flapper.is_alive()
    assert_ok(res, tmp_path, up, down)
    # the link really flapped while the data moved, to the end: several down/up cycles after the first bytes
    # arrived (a toggle every 0.5 s, or as fast as netlink answers in the emulated VM)
    assert flowing, "no data arrived"
    during_flow = [t for t in toggles if flowing[0] <= t <= ended]
    assert len(during_flow) >= 4, (len(toggles), len(during_flow))
    gaps = [b - a for a, b in itertools.pairwise(toggles)]
    assert max(gaps) < 4.0, max(gaps)  # no long pause in the flapping (set_link is slow under emulation)
    # the steady link carried a real share (per-path counters restart when a path re-joins: read the link's own)
    assert rx_bytes(net, "b", 1) >= 1 * MiB and rx_bytes(net, "a", 1) >= down.stat().st_size // 8, _stderr(res)
    died = res.client.stderr.count(" down: ")
    rejoined = res.client.stderr.count("re-joined after")
    events = _path(res.client, 0).get("transport_info", {}).get("events", [])
    _report(record_property, f"flapping: {len(toggles)} toggles (mean interval {sum(gaps) / len(gaps):.2f} s, "
            f"{len(during_flow)} while data flowed) in {res.elapsed:.1f} s; client saw {died} path downs, "
            f"{rejoined} re-joins, resent {res.client.stats['resent_bytes']} bytes; path 0 SCTP events: "
            f"{events[-6:]}; per-path (bytes_sent, alive) at the end: "
            f"{[(p['bytes_sent'], p['alive']) for p in sorted(res.client.stats['paths'], key=lambda p: p['id'])]}")


def test_sctp_two_percent_loss_on_one_path(netns_topology, tmp_path, record_property):
    """2 % random loss (nftables numgen, both directions) on link 1: SCTP retransmits, the stream stays exact,
    and the lossy path still carries data."""
    net = netns_topology("2x20")
    net.set_loss(1, 2.0)
    up = random_file(tmp_path / "up", 10 * MiB)
    before = snmp(net, "a")
    res = transfer(net, tmp_path, to_listener=up, to_client=None, timeout=150, client_args=SCTP, listen_args=SCTP)
    assert_ok(res, tmp_path, up)
    after = snmp(net, "a")
    sent = [p["bytes_sent"] for p in sorted(res.client.stats["paths"], key=lambda p: p["id"])]
    # both links carried a real share, the lossy one too (the links' own counters: a path's restart on a re-join)
    assert min(rx_bytes(net, "b", i) for i in range(2)) >= 1 * MiB, (sent, _stderr(res))
    dropped = nft_dropped(net, "b", "loss1") + nft_dropped(net, "a", "loss1")
    assert dropped > 0  # the loss rule hit packets of the transfer
    # and the kernel repaired the loss inside the association: SCTP retransmissions (fast or timer-driven)
    retrans = sum(after.get(k, 0) - before.get(k, 0) for k in ("SctpT3Retransmits", "SctpFastRetransmits"))
    assert retrans > 0, (before, after)
    _report(record_property, f"2% loss: {dropped} packets dropped on link 1, {retrans} SCTP retransmissions, "
            f"per-path bytes {sent}, resent by sctpbond {res.client.stats['resent_bytes']}, client path downs "
            f"{res.client.stderr.count(' down: ')}, {res.elapsed:.1f} s")

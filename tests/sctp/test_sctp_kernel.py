"""sctpbond over kernel SCTP as the kernel really behaves (docs/sctp-notes.md section 8): an ordinary user's
buffers, timers that do not fire spuriously on a paced path, a pinned source address honoured, IPv6 and
dual-stack listeners. Runs where the kernel has SCTP (inside the VM on hosts without it). Every transfer checks
the bytes and both exit codes."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sctpbond.lab.topology import LinkSpec, Topology, link_counters
from sctpbond.transport import sctp_support
from tests.integration import harness
from tests.integration.harness import UNPRIVILEGED, assert_ok, random_file, sha256_file, transfer

pytestmark = [pytest.mark.sctp, pytest.mark.netns, pytest.mark.timeout(300)]
MiB = 1 << 20
SCTP = ["-t", "sctp", "--dead-after", "5"]

if not sctp_support()[0]:
    pytestmark.append(pytest.mark.skip(reason="kernel without SCTP: run via tests/vm/run.sh (scripts/test.sh does)"))


@pytest.fixture(autouse=True)
def _patient_listener_start(monkeypatch):
    monkeypatch.setattr(harness, "wait_listening", functools.partial(harness.wait_listening, timeout=120))


def snmp(net, host: str) -> dict[str, int]:
    text = net.run(host, ["cat", "/proc/net/sctp/snmp"], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, re.MULTILINE)}


def rate(side) -> float:
    """Mbit/s by the session's own clock (the emulated CPU makes process wall time meaningless)."""
    return side.stats["bytes_acked"] * 8 / side.stats["elapsed_s"] / 1e6


def test_an_ordinary_user_gets_what_root_gets(netns_topology, tmp_path, record_property):
    """One 60 Mbit/s link (above what 256 KiB frames in a 416 KiB buffer carried: 39 Mbit/s, one frame in
    flight at a time), the same transfer as root and with no capability at all, in the same boot."""
    net = netns_topology(Topology("1x60", "one 60 Mbit/s link", (LinkSpec(60),)))
    up = random_file(tmp_path / "up", 32 * MiB)
    rates = {}
    for who, prefix in (("root", ()), ("user", tuple(UNPRIVILEGED))):
        res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=SCTP, listen_args=SCTP,
                       timeout=240, prefix=prefix)
        assert_ok(res, tmp_path, up)
        rates[who] = rate(res.client)
        frames = res.client.stats["paths"][0]["transport_info"]
        if prefix:
            assert frames["sndbuf"] <= 2 * int(Path("/proc/sys/net/core/wmem_max").read_text()), frames
            assert "sysctl -w net.core.wmem_max=" in res.client.stderr, res.client.stderr
        assert frames["max_frame"] == frames["sndbuf"] // 4, frames
    record_property("rates", rates)
    print(f"FIGURE unprivileged: root {rates['root']:.1f} Mbit/s, no capabilities {rates['user']:.1f} Mbit/s "
          f"({rates['user'] / rates['root']:.2f} x)")
    assert rates["user"] >= 0.85 * rates["root"], rates


def test_a_paced_path_has_no_spurious_timeouts(netns_topology, tmp_path):
    """Input paced at 6 Mbit/s over two 20 Mbit/s links: every path goes idle between bursts, so the lone last
    packet of each waits for the peer's delayed SACK. No T3 retransmission timeout may fire, no chunk be
    retransmitted, and no association change its primary address (the kernel's own counters)."""
    net = netns_topology("2x20")
    up = random_file(tmp_path / "up", 5 * MiB)
    before = {h: snmp(net, h) for h in "ab"}
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=[*SCTP, "--limit-rate", "6Mbit"],
                   listen_args=SCTP, timeout=240)
    assert_ok(res, tmp_path, up)
    assert res.client.stats["elapsed_s"] >= 5 * 8 / 6 * 0.8  # really paced
    t3 = {h: snmp(net, h)["SctpT3RtxExpireds"] - before[h].get("SctpT3RtxExpireds", 0) for h in "ab"}
    rtx = [p["transport_info"]["rtx_chunks"] for side in (res.client, res.listener) for p in side.stats["paths"]]
    print(f"FIGURE paced: {res.client.stats['elapsed_s']:.1f} s, T3 timeouts {t3}, retransmitted chunks {rtx}")
    assert t3 == {"a": 0, "b": 0}, t3
    for side in (res.client, res.listener):
        for p in side.stats["paths"]:
            info = p["transport_info"]
            assert info["rtx_chunks"] == 0, info
            assert not [e for e in info["events"] if "potentially-failed" in e or "unreachable" in e], info
            # The one made-primary event allowed is our own set_primary at connect, for the path's own address.
            primaries = [e for e in info["events"] if "made-primary" in e]
            assert len(primaries) <= 1 and all(info["primary"] in e for e in primaries), info


def test_a_pinned_source_address_is_honoured(netns_topology, tmp_path):
    """The usual multi-uplink set-up: source-based policy routing sends what leaves from A1 out of uplink 1, even
    to the listener's link-0 address. `--path A1=B0` must send every packet from A1 (not from the route's
    preferred source A0, which the kernel picks when the association is bound to every address)."""
    net = netns_topology("2x20")
    a1, b0 = net.addr("a", 1), net.addr("b", 0)
    net.run("a", ["ip", "rule", "add", "from", a1, "table", "101"], check=True)
    net.run("a", ["ip", "route", "add", f"{b0}/32", "dev", net.ifname("a", 1), "table", "101"], check=True)
    net.run("b", ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"], check=True)
    net.run("b", ["sysctl", "-qw", f"net.ipv4.conf.{net.ifname('b', 0)}.rp_filter=0"], check=True)
    size = 4 * MiB
    up = random_file(tmp_path / "up", size)

    def rx(host: str) -> dict[str, int]:
        text = net.run(host, ["cat", "/proc/net/dev"], capture_output=True, text=True, check=True).stdout
        return {name: c[0] for name, c in link_counters(text).items()}

    before = rx("b")
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=SCTP, listen_args=SCTP,
                   addrs=[f"{a1}={b0}"], timeout=240)
    assert_ok(res, tmp_path, up)
    after = rx("b")
    link0 = after[net.ifname("b", 0)] - before[net.ifname("b", 0)]
    link1 = after[net.ifname("b", 1)] - before[net.ifname("b", 1)]
    assert link1 >= size, (link0, link1)  # all of it came in over uplink 1, as the policy says
    assert link0 < size // 20, (link0, link1)
    (path,) = res.client.stats["paths"]
    assert path["transport_info"]["primary"] == b0


def _run_pair(net, tmp_path, bind: str, remote: str, up: Path) -> tuple:
    port = harness.PORT
    out = tmp_path / f"out-{remote.replace(':', '_')}"
    listener = net.popen("b", [*harness.SCTPBOND, "listen", "-t", "sctp", "-p", str(port), "--bind", bind,
                               "-o", str(out), "-N"], stderr=subprocess.PIPE, text=True)
    try:
        harness.wait_listening(net, "b", port)
        client = net.run("b", [*harness.SCTPBOND, "connect", "-t", "sctp", "-p", str(port), "-i", str(up), "-N",
                               remote], capture_output=True, text=True, timeout=180)
        _, lerr = listener.communicate(timeout=60)
    finally:
        harness.stop(listener)
    return client, listener.returncode, lerr, out


@pytest.mark.parametrize(("bind", "remote"), [("::1", "::1"), ("::", "::1"), ("::", "127.0.0.1"),
                                              ("localhost", "127.0.0.1")])
def test_ipv6_dual_stack_and_named_sctp_listeners(netns_topology, tmp_path, bind, remote):
    net = netns_topology("2x20")
    up = random_file(tmp_path / "up", 2 * MiB)
    client, lrc, lerr, out = _run_pair(net, tmp_path, bind, remote, up)
    assert client.returncode == 0 and lrc == 0, (client.stderr, lerr)
    assert "Traceback" not in client.stderr + lerr
    assert sha256_file(out) == sha256_file(up)


def test_bad_sctp_addresses_are_one_line_errors(tmp_path):
    for argv, text in ((["listen", "-t", "sctp", "--bind", "no-such-host.invalid", "-p", "7399"], "cannot listen"),
                       (["connect", "-t", "sctp", "-p", "7399", "-N", "no-such-host.invalid"], "no-such-host")):
        proc = subprocess.run([sys.executable, "-m", "sctpbond", *argv], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert text in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_data_never_overtakes_ready_on_a_reordering_link(netns_topology, tmp_path):
    """netem jitter on the listener's side reorders its packets (8 ms of jitter on a 10 ms delay): READY goes out
    ordered on stream 0 and the listener's first DATA right after it; if DATA went unordered on another stream
    it could reach the dialler first, which must then refuse it ("expected READY"). Several sessions, each with
    data towards the dialler from the first moment."""
    net = netns_topology(Topology("2x20-jitter", "two 20 Mbit/s links, 10 ms", (LinkSpec(20, delay_ms=10),) * 2))
    for i in range(2):
        net.run("b", ["tc", "qdisc", "change", "dev", net.ifname("b", i), "root", "handle", "1:", "netem", "delay",
                      "10ms", "8ms"], check=True)
    down = random_file(tmp_path / "down", 2 * MiB)
    for _ in range(3):
        res = transfer(net, tmp_path, to_listener=None, to_client=down, client_args=SCTP, listen_args=SCTP,
                       timeout=240)
        assert_ok(res, tmp_path, to_client=down)
        assert "expected READY" not in res.client.stderr
    reordered = snmp(net, "a")
    print(f"FIGURE jitter: dialler's SCTP saw {reordered.get('SctpInUnorderChunks', 0)} unordered and "
          f"{reordered.get('SctpInOrderChunks', 0)} ordered chunks")


@pytest.mark.parametrize("prefix", [(), tuple(UNPRIVILEGED)], ids=["root", "unprivileged"])
def test_doctor_reports_the_sctp_buffers(prefix):
    out = subprocess.run([*prefix, sys.executable, "-m", "sctpbond", "doctor"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "SCTP buffers" in ln)
    if prefix and int(Path("/proc/sys/net/core/wmem_max").read_text()) < 8 << 20:
        assert "[--]" in line and "sysctl -w net.core.wmem_max=8388608 net.core.rmem_max=8388608" in line, line
    else:
        assert "[ok]" in line, line

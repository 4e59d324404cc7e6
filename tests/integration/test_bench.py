"""`sctpbond bench` and `sctpbond demo` end to end: real namespaces, iperf3, MPTCP and sctpbond processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from pyroute2 import netns

pytestmark = pytest.mark.netns

SCTPBOND = [sys.executable, "-m", "sctpbond"]


@pytest.fixture(autouse=True)
def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    for tool in ("iperf3", "nft", "nsenter", "ss"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs the {tool} command")


def _run(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, int]:
    """Run sctpbond; also return its pid, which names the namespaces it builds."""
    with subprocess.Popen(SCTPBOND + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.terminate()  # SIGTERM: sctpbond tears its topology down
            out, err = p.communicate(timeout=15)
            pytest.fail(f"sctpbond {args[0]} did not finish in {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), p.pid


def _no_namespace_left(pid: int) -> None:
    left = [n for n in netns.listnetns() if n.startswith((f"sbb{pid}-", f"sbd{pid}-"))]
    assert not left, f"namespaces left behind: {left}"


@pytest.mark.timeout(90)
def test_bench_2x200_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc, pid = _run(["bench", "--topology", "2x200", "--seconds", "2", "--transport", "tcp", "--json", str(out),
                      "--plot", str(png)], timeout=80)
    assert proc.returncode == 0, proc.stderr
    _no_namespace_left(pid)
    report = json.loads(out.read_text())
    assert report["host"]["kernel"] and report["host"]["cpus"] >= 1
    assert [link["rate_mbit"] for link in report["config"]["links"]] == [200, 200]
    runs = {r["name"]: r for r in report["runs"]}
    expected = {"tcp-link0", "tcp-link1", "sctpbond-tcp"}
    mptcp_ok = os.path.exists("/proc/sys/net/mptcp/enabled")
    if mptcp_ok:
        expected.add("mptcp")
    assert expected <= set(runs), sorted(runs)
    for name in expected:
        r = runs[name]
        assert r["ok"] and r["error"] is None, (name, r["error"])
        # Shaped at 200 Mbit/s per link: one link alone well under, both links together under 2 x 200.
        limit = 210 if name.startswith("tcp-link") else 420
        assert 20 < r["mbit_s"] < limit, (name, r["mbit_s"])
        assert r["bytes"] > 0 and r["seconds"] > 0.5
        assert r["cpu_s_per_gib"] > 0
        assert all(v > 0 for v in r["peak_rss_mib"].values())
        series = r["series"]
        assert len(series["t"]) >= 5 and len(series["link_mbit_s"]) == 2
        assert max(max(col) for col in series["link_mbit_s"]) > 20
    # A single-link run uses its own link only; bonded runs use both.
    assert runs["tcp-link0"]["link_bytes"][1] < runs["tcp-link0"]["link_bytes"][0] // 100
    for name in expected - {"tcp-link0", "tcp-link1"}:
        assert min(runs[name]["link_bytes"]) > 1 << 20, (name, runs[name]["link_bytes"])
    rows = {row["name"]: row for row in report["summary"]["rows"]}
    assert report["summary"]["single_tcp_sum_mbit_s"] > 100
    assert 0.5 < rows["sctpbond-tcp"]["ratio_to_tcp_sum"] < 1.2
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(60)
def test_demo_2x200_64M_hashes_match():
    proc, pid = _run(["demo", "--topology", "2x200", "--size", "64M"], timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sha256 match" in proc.stdout
    assert "one TCP connection:" in proc.stdout
    _no_namespace_left(pid)


def test_link_counters_read_host_a_veths_from_procfs(netns_topology):
    from sctpbond.lab.counters import Counters

    net = netns_topology("4x20")
    counters = Counters(net, "a", [net.ifname("a", i) for i in range(net.n_links)])
    try:
        before = counters.read()
        ping = net.run("a", ["ping", "-c", "3", "-i", "0.2", "-s", "1000", net.addr("b", 2)], capture_output=True)
        assert ping.returncode == 0, ping.stderr
        after = counters.read()
    finally:
        counters.close()
    grew = [b - a for a, b in zip(before, after, strict=True)]
    assert grew[2] >= 3 * 1028  # three ICMP echo requests of 1000 bytes of payload left on link 2
    assert all(g < 1000 for i, g in enumerate(grew) if i != 2), grew  # the other links stayed quiet
    assert counters._holder.poll() is not None  # the process parked in host a is gone

"""`sctpbond bench-failover`: a transfer that loses links mid-way, against its ideal time.

On 4 shaped links: link 1 is set down at 1 s and link 2 blackholed at 2 s (both after the client starts). The
ideal time moves the bytes at the single-TCP rate of the links up at each moment (measured on link 0 in the same
run); the target is ideal + 1.5 s. Also reported: how long after the blackhole the first byte was resent, and the
peak RSS of both processes against the configured window.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import click

from ..console import friendly_errors
from ..defaults import DEFAULT_PORT
from ..units import parse_size
from .baselines import iperf_single
from .procs import SCTPBOND, BenchError, Proc, read_json, stats_paths
from .rig import BenchConfig, bench_session


def _ideal_seconds(size: int, rate_bps: float, n: int, t_down: float, t_black: float) -> float:
    """Bytes at rate x (links up): n until t_down, n-1 until t_black, n-2 after."""
    per = rate_bps / 8
    first = n * per * t_down
    second = (n - 1) * per * (t_black - t_down)
    if size <= first:
        return size / (n * per)
    if size <= first + second:
        return t_down + (size - first) / ((n - 1) * per)
    return t_black + (size - first - second) / ((n - 2) * per)


def _wait(proc: Proc, timeout: float) -> None:
    """Until proc exits (Proc reaps it with wait4: exit code, peak RSS); killed after `timeout` s."""
    proc.wait_dead(timeout)
    if not proc.finished():
        proc.kill()
        raise BenchError(f"{proc.name} did not finish within {timeout:g} s")


@click.command("bench-failover")
@click.option("--topology", default="4x200", show_default=True)
@click.option("--size", default="512M", show_default=True)
@click.option("--transport", type=click.Choice(["tcp", "sctp"]), default="tcp", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the figures here.")
@friendly_errors
def bench_failover(topology: str, size: str, transport: str, json_out: str | None) -> None:
    """Link 1 down at 1 s, link 2 blackholed at 2 s: time to completion against the ideal, failover latency."""
    from .topology import load  # pyroute2 is slow to import: only for the commands that need it

    nbytes = parse_size(size)
    topo = load(topology)
    n = len(topo.links)
    if n < 3:
        raise BenchError("bench-failover needs at least 3 links")
    cfg = BenchConfig(topology=topology, transports=[transport], baselines=["tcp"], size=None, seconds=3.0,
                      paths=None, progress=False)
    with bench_session(topo, cfg, "failover") as bench:
        net, tmp = bench.net, bench.workdir
        src, dst = tmp / "in", tmp / "out"
        subprocess.run(["sh", "-c", f"head -c {nbytes} /dev/urandom > {src}"], check=True)
        rate = iperf_single(bench, 0, "tcp", 0).mbit_s
        click.echo(f"one TCP connection on link 0: {rate:.1f} Mbit/s")
        lstats, cstats = tmp / "l.json", tmp / "c.json"
        common = ["-p", str(DEFAULT_PORT), "-t", transport]
        listener = bench.popen("b", "sctpbond listen", SCTPBOND + ["listen", *common, "-N", "-o", str(dst),
                                                                   "--stats-json", str(lstats)])
        bench.wait_listening(DEFAULT_PORT, proc=listener)
        t0 = time.monotonic()
        # path i is link i: connect numbers its paths in the order their addresses are given
        client = bench.popen("a", "sctpbond connect", SCTPBOND + ["connect", *common, "-v", "-i", str(src),
                                                                  "--stats-json", str(cstats), "-o", "/dev/null"]
                             + [net.addr("b", i) for i in range(n)])
        events = [(1.0, lambda: net.set_link(1, False)), (2.0, lambda: net.blackhole(2, True))]

        def schedule() -> None:
            for at, action in events:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                action()

        threading.Thread(target=schedule, daemon=True).start()
        _wait(client, 300)
        elapsed = time.monotonic() - t0
        _wait(listener, 60)
        cs = read_json(cstats, "transfer failed", client, listener)
        same = subprocess.run(["cmp", "-s", str(src), str(dst)]).returncode == 0
        ideal = _ideal_seconds(nbytes, rate * 1e6, n, 1.0, 2.0)
        # the session clock starts after the first path's handshake: shift by the client's start-up
        startup = elapsed - cs["elapsed_s"]
        black_path = stats_paths(cs).get(2)
        if black_path is None:
            raise BenchError(f"no path 2 (to {net.addr('b', 2)}) in the client's stats")
        # The blackholed path's chunks go out again on the others the moment it turns stale (silent with data
        # outstanding); the first resend of all may come earlier, for the link set down at 1 s.
        first_resend_after_blackhole = None
        if black_path.get("stale_at_s") is not None and black_path["stale_at_s"] + startup >= 2.0:
            first_resend_after_blackhole = round(black_path["stale_at_s"] + startup - 2.0, 3)
        elif black_path["down_at_s"] is not None:
            first_resend_after_blackhole = round(black_path["down_at_s"] + startup - 2.0, 3)
        result = {
            "topology": topology, "transport": transport, "bytes": nbytes, "byte_exact": same,
            "single_tcp_mbit_s": round(rate, 1), "elapsed_s": round(elapsed, 2), "session_s": cs["elapsed_s"],
            "ideal_s": round(ideal, 2), "target_s": round(ideal + 1.5, 2),
            "met": same and elapsed <= ideal + 1.5,
            "blackholed_path_down_after_s": None if black_path["down_at_s"] is None
            else round(black_path["down_at_s"] + startup - 2.0, 3),
            "first_resend_after_blackhole_s": first_resend_after_blackhole,
            "resent_bytes": cs["resent_bytes"],
            "peak_rss_mib": {"sender": round(client.maxrss_kib / 1024, 1),
                             "receiver": round(listener.maxrss_kib / 1024, 1)},
            "window_mib": 64,
        }
        click.echo(json.dumps(result, indent=2))
        if json_out:
            Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
        if not same:
            raise BenchError("received bytes differ from what was sent")

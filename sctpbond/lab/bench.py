"""`sctpbond bench`: measure sctpbond against the baselines it must beat, on an emulated multi-link topology.

One invocation builds the topology (unique namespace prefix, always torn down), then runs, in order:

* ``tcp-linkI``   one plain TCP connection (iperf3) on link I alone, for every link in turn: the per-link
                  reference; their sum is the figure a perfect striper reaches.
* ``tcp-parallel`` (opt-in) one iperf3 per link, all at once: what independent TCP flows get from the links
                  and the CPUs together.
* ``tcp-pipe``    (opt-in) one plain TCP connection on link 0 fed from the same pipe by the same small Python
                  sender as MPTCP: the single-connection reference for sctpbond's own overhead.
* ``mptcp``       kernel MPTCP, one subflow per link (in-kernel path manager, `ip mptcp endpoint ... subflow`
                  as the kernel's mptcp selftests do), fed from a pipe like sctpbond.
* ``sctp-linkI``  plain SCTP (iperf3 --sctp) per link, where the kernel has SCTP.
* ``sctp-parallel`` (opt-in) one iperf3 --sctp per link, all at once, where the kernel has SCTP: whether the
                  kernel (in the VM: the emulated CPUs) can carry every link at its rate together.
* ``sctpbond-T``  `sctpbond listen` in host b, `sctpbond connect` in host a fed from a pipe, for each transport T.

Every figure is taken by the receiving side of the tool itself (iperf3's receiver; the MPTCP receiver from
accept() to EOF; sctpbond listener's session from first handshake to the end), CPU time and peak RSS come from
os.wait4() on each process, and per-link throughput comes from the veth tx counters of host a (its
/proc/net/dev), sampled every --interval seconds for a time series of every run.

This module plans the runs and drives them (run_bench, the `bench` command); the recipes are in baselines.py,
the rig they run on in rig.py, the figures and their display in report.py.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..console import friendly_errors
from ..errors import UsageError
from ..host import mptcp_support, sctp_support
from ..units import MiB, parse_size
from . import baselines as recipes
from .procs import BenchError, need, require_root
from .report import RunResult, plot, print_table, report_title, summarize
from .rig import BenchConfig, bench_session, remove_stale_namespaces

KNOWN_BASELINES = ("tcp", "tcp-parallel", "tcp-pipe", "mptcp", "sctp", "sctp-parallel")
DEFAULT_BASELINES = "tcp,mptcp,sctp"


def host_facts() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20), 1)
    iperf = ""
    if shutil.which("iperf3"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            iperf = subprocess.run(["iperf3", "--version"], check=False, capture_output=True, text=True,
                                   timeout=5).stdout
            iperf = iperf.splitlines()[0] if iperf else ""

    def sysctl(name: str) -> str | None:
        try:
            return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
        except OSError:
            return None

    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "sctpbond": __version__,
        "iperf3": iperf,
        "tcp_congestion_control": sysctl("net.ipv4.tcp_congestion_control"),
        "mptcp_enabled": sysctl("net.mptcp.enabled"),
        "mptcp_scheduler": sysctl("net.mptcp.scheduler"),
        "kernel_sctp": sctp_support()[0],
        "loadavg_at_start": list(os.getloadavg()),
    }



def plan(cfg: BenchConfig, n_links: int, host: dict[str, Any]) -> tuple[list[tuple[str, str, tuple]], list[RunResult]]:
    """The runs to do, in order, as (name, Bench method, arguments before `rep`), and the runs skipped (why)."""
    links = list(range(cfg.paths or n_links))
    todo: list[tuple[str, str, tuple]] = []
    skipped: list[RunResult] = []
    if "tcp" in cfg.baselines:
        todo += [(f"tcp-link{i}", "iperf_single", (i, "tcp")) for i in links]
    if "tcp-parallel" in cfg.baselines:
        todo.append(("tcp-parallel", "iperf_parallel", ("tcp",)))
    if "tcp-pipe" in cfg.baselines:
        todo.append(("tcp-pipe", "tcp_pipe", ()))
    if "mptcp" in cfg.baselines:
        ok, why = mptcp_support()
        if ok:
            todo.append(("mptcp", "mptcp", ()))
        else:
            skipped.append(RunResult("mptcp", "mptcp", skipped=True, notes=[f"skipped: {why}"]))
    if "sctp" in cfg.baselines:
        if host["kernel_sctp"]:
            todo += [(f"sctp-link{i}", "iperf_single", (i, "sctp")) for i in links]
        else:
            skipped.append(RunResult("sctp-link*", "sctp", skipped=True,
                                     notes=["skipped: this kernel has no SCTP (run the bench inside the VM)"]))
    if "sctp-parallel" in cfg.baselines:
        if host["kernel_sctp"]:
            todo.append(("sctp-parallel", "iperf_parallel", ("sctp",)))
        else:
            skipped.append(RunResult("sctp-parallel", "sctp-parallel", skipped=True,
                                     notes=["skipped: this kernel has no SCTP (run the bench inside the VM)"]))
    for t in cfg.transports:
        if t == "sctp" and not host["kernel_sctp"]:
            skipped.append(RunResult("sctpbond-sctp", "sctpbond", transport="sctp", skipped=True,
                                     notes=["skipped: this kernel has no SCTP"]))
            continue
        todo.append((f"sctpbond-{t}", "sctpbond", (t,)))
        if cfg.encrypted:
            todo.append((f"sctpbond-{t}-aes", "sctpbond_aes", (t,)))
    return todo, skipped


def run_bench(cfg: BenchConfig, *, json_out: Path | None = None, plot_out: Path | None = None,
              argv: Sequence[str] = ()) -> dict[str, Any]:
    from .topology import load  # pyroute2 is slow to import: only when a topology is built

    require_root("sctpbond bench")
    for tool, pkg in (("iperf3", "iperf3"), ("nsenter", "util-linux"), ("ss", "iproute2"), ("ip", "iproute2"),
                      ("nft", "nftables")):
        if tool == "iperf3" and not ({"tcp", "tcp-parallel", "sctp", "sctp-parallel"} & set(cfg.baselines)):
            continue
        need(tool, pkg)
    topo = load(cfg.topology)
    if cfg.paths is not None and not 1 <= cfg.paths <= len(topo.links):
        raise UsageError(f"--paths must be between 1 and {len(topo.links)} for topology {topo.name}")
    host = host_facts()
    if host["loadavg_at_start"][0] > 0.7:
        click.echo(f"note: the machine is busy (load average {host['loadavg_at_start'][0]:.2f}); "
                   "figures may be low", err=True)
    remove_stale_namespaces()
    todo, skipped = plan(cfg, len(topo.links), host)
    for s in skipped:
        click.echo(f"{s.name}: {s.notes[0]}", err=True)
    runs: list[RunResult] = []
    started = _dt.datetime.now(_dt.UTC)
    total = len(todo) * cfg.repeat
    with bench_session(topo, cfg, "bench") as bench:
        k = 0
        for rep in range(cfg.repeat):  # repetitions interleaved, so slow drift hits every run alike
            for name, method, args in todo:
                k += 1
                click.echo(f"[{k}/{total}] {name}" + (f" (repetition {rep + 1})" if cfg.repeat > 1 else ""),
                           err=True)
                t0 = time.monotonic()
                try:
                    r = getattr(recipes, method)(bench, *args, rep)
                except (BenchError, subprocess.SubprocessError, OSError) as exc:
                    if not isinstance(exc, BenchError):
                        exc = BenchError(f"{name}: {type(exc).__name__}: {exc}")
                    kind = "sctpbond" if name.startswith("sctpbond") else name.split("-link")[0]
                    r = RunResult(name, kind, rep, error=str(exc))
                    click.echo(f"  FAILED: {exc}", err=True)
                else:
                    click.echo(f"  {name}: {r.mbit_s:.1f} Mbit/s in {r.seconds:.2f} s"
                               + (f" ({'; '.join(r.notes)})" if r.notes else "")
                               + f" [{time.monotonic() - t0:.1f} s]", err=True)
                runs.append(r)
                time.sleep(0.3)  # let queues drain before the next run
    runs += skipped
    links = list(range(cfg.paths or len(topo.links)))
    summary = summarize(runs, links)
    report = {
        "tool": "sctpbond bench", "command": list(argv), "date": started.isoformat(timespec="seconds"),
        "duration_s": round((_dt.datetime.now(_dt.UTC) - started).total_seconds(), 1),
        "host": host | {"loadavg_at_end": list(os.getloadavg())},
        "config": asdict(cfg) | {"topology_name": topo.name, "description": topo.description,
                                 "links": [asdict(link) for link in topo.links], "paths_used": links},
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    title = report_title(report)
    report["title"] = title
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    if plot_out is not None:
        plot(runs, summary, plot_out, title)
    print_table(summary, title)
    failed = [r for r in runs if r.error]
    if failed:
        raise BenchError(f"{len(failed)} of {len(runs) - len(skipped)} runs failed; first: {failed[0].error}")
    return report


def _split_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise UsageError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)} (comma separated)")
    return list(dict.fromkeys(items))


@click.command("bench")
@click.option("--topology", "-T", required=True, metavar="NAME|FILE",
              help="Topology to build: a shipped name (see `sctpbond topo show`) or a TOML file.")
@click.option("--transport", "-t", type=click.Choice(["auto", "tcp", "sctp", "both"]), default="auto",
              show_default=True, help="sctpbond transport(s) to measure; auto: tcp, plus sctp where the kernel "
                                      "has it.")
@click.option("--size", "-s", "size_text", metavar="N", help="Bytes per run from a pipe, e.g. 512M (default 256M "
              "unless --seconds). Single-link TCP baselines send N / links each.")
@click.option("--seconds", "-S", type=click.FloatRange(min=0.5), help="Run each test this long instead.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write config, host facts, every run and its time series here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw per-link throughput over time (PNG; needs matplotlib).")
@click.option("--baselines", default=DEFAULT_BASELINES, show_default=True,
              help=f"Comma-separated references from {', '.join(KNOWN_BASELINES)}, or 'none'.")
@click.option("--paths", "-k", type=click.IntRange(min=1), help="Use only the first K links (default: all).")
@click.option("--data", type=click.Choice(["zero", "random"]), default="zero", show_default=True,
              help="What the pipe carries (zeros from head -c, or random bytes from a generator process).")
@click.option("--repeat", "-r", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Repeat every run; the table shows the median (and min-max).")
@click.option("--interval", type=click.FloatRange(0.02, 1.0), default=0.1, show_default=True,
              help="Interface counter sampling period, seconds.")
@click.option("--timeout", type=click.FloatRange(min=1), help="Per-run limit in seconds (default from the "
              "size and the link rates).")
@click.option("--bond-opt", "bond_opts", multiple=True, metavar="OPT",
              help="Extra option for both `sctpbond listen` and `connect` (repeatable), e.g. --bond-opt=--chunk=1M.")
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False),
              help="Record py-spy profiles (raw collapsed stacks) of both sctpbond processes into this directory.")
@click.option("--encrypted", "-E", is_flag=True,
              help="Also run sctpbond with a pre-shared key (AES-256-GCM on every frame), same links, same run.")
@click.option("-q", "--quiet", is_flag=True, help="No per-second progress lines.")
@friendly_errors
def bench(topology: str, transport: str, size_text: str | None, seconds: float | None, json_out: Path | None,
          plot_out: Path | None, baselines: str, paths: int | None, data: str, repeat: int, interval: float,
          timeout: float | None, bond_opts: tuple[str, ...], profile_dir: str | None, encrypted: bool,
          quiet: bool) -> None:
    """Measure sctpbond against one TCP per link, MPTCP and plain SCTP on an emulated topology.

    Example: sctpbond bench --topology 4x200 --size 512M --json out.json --plot out.png
    """
    if size_text is not None and seconds is not None:
        raise UsageError("give --size or --seconds, not both")
    size = parse_size(size_text, "--size") if size_text is not None else (None if seconds else 256 * MiB)
    if size is not None and size < MiB:
        raise UsageError("--size must be at least 1M")
    transports = {"auto": ["tcp", "sctp"] if sctp_support()[0] else ["tcp"], "both": ["tcp", "sctp"]}.get(
        transport, [transport])
    if transports == ["sctp"] and not sctp_support()[0]:
        raise UsageError("--transport sctp: this kernel has no SCTP (try `modprobe sctp`, or the VM)")
    if profile_dir and not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()):
        raise UsageError("--profile needs py-spy (pip install py-spy)")
    cfg = BenchConfig(topology=topology, transports=transports,
                      baselines=_split_list(baselines, KNOWN_BASELINES, "baseline"), size=size,
                      seconds=seconds, paths=paths, data=data, repeat=repeat, interval=interval,
                      timeout=timeout, bond_opts=list(bond_opts), profile_dir=profile_dir, progress=not quiet,
                      encrypted=encrypted)
    run_bench(cfg, json_out=json_out, plot_out=plot_out, argv=["sctpbond", *sys.argv[1:]])

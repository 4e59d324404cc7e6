"""What a bench run yields and how it is shown: one RunResult per run, the summary over repetitions (medians,
ratios to the baselines), the table on the terminal and the plot of per-link throughput over time."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..units import GiB, MiB, mbit
from .counters import Series
from .procs import BenchError, Proc


@dataclass
class RunResult:
    name: str
    kind: str  # tcp | tcp-parallel | mptcp | sctp | sctp-parallel | sctpbond
    rep: int = 0
    transport: str | None = None
    links: list[int] = field(default_factory=list)  # links this run is meant to use
    ok: bool = False
    skipped: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0  # the tool's own transfer time, measured by its receiver
    mbit_s: float = 0.0
    wall_s: float | None = None  # sender process launch to exit (includes start-up and handshakes)
    link_bytes: list[int] = field(default_factory=list)  # veth tx bytes (host a) per link, whole run
    link_mbit_s: list[float] = field(default_factory=list)  # link_bytes over `seconds`
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_s_per_gib: float | None = None
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    rusage: dict[str, dict[str, float]] = field(default_factory=dict)  # per process: user/sys s, ctx switches
    loadavg: list[float] = field(default_factory=list)
    # CPUs busy machine-wide during the run, and how many of them the measured processes account for: the
    # difference is the kernel's own network work (softirq) plus anything else running on the machine.
    machine_busy_cores: float | None = None
    own_cores: float | None = None
    foreign_cores: float | None = None  # CPUs taken by other people's processes meanwhile (noise)
    foreign_top: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def finish(self, nbytes: int, seconds: float, link_bytes: list[int], series: Series,
               procs: dict[str, Proc]) -> None:
        self.bytes, self.seconds = nbytes, seconds
        if nbytes <= 0 or seconds <= 0:
            raise BenchError(f"{self.name}: no data was transferred")
        self.mbit_s = round(mbit(nbytes, seconds), 2)
        self.link_bytes = link_bytes
        self.link_mbit_s = [round(mbit(b, seconds), 2) for b in link_bytes]
        self.series = series.to_json()
        self.cpu_s = {k: round(p.cpu_s, 3) for k, p in procs.items()}
        self.peak_rss_mib = {k: round(p.maxrss_kib / 1024, 1) for k, p in procs.items()}
        self.rusage = {k: p.rusage for k, p in procs.items()}
        self.cpu_s_per_gib = round(sum(p.cpu_s for p in procs.values()) / (nbytes / GiB), 3)
        self.loadavg = [round(x, 2) for x in os.getloadavg()]
        self.machine_busy_cores = series.machine_busy_cores
        self.foreign_cores, self.foreign_top = series.foreign_cores, series.foreign_top
        if self.foreign_cores is not None and self.foreign_cores >= 0.3:
            self.notes.append(f"machine shared: others used {self.foreign_cores:.1f} CPUs "
                              f"({', '.join(self.foreign_top)})")
        walls = [p.wall_s for p in procs.values() if p.wall_s]
        if walls:
            self.own_cores = round(sum(p.cpu_s for p in procs.values()) / max(walls), 2)
        self.ok = True


def summarize(runs: list[RunResult], links: list[int]) -> dict[str, Any]:
    """Median of the repetitions of each run; ratios against the sum of the single-link TCP medians."""
    by_name: dict[str, list[RunResult]] = {}
    for r in runs:
        by_name.setdefault(r.name, []).append(r)
    med: dict[str, float] = {}
    rows = []
    for name, reps in by_name.items():
        good = [r for r in reps if r.ok]
        row: dict[str, Any] = {"name": name, "kind": reps[0].kind, "runs": len(reps), "ok_runs": len(good),
                               "skipped": all(r.skipped for r in reps),
                               "notes": sorted({n for r in reps for n in r.notes}),
                               "errors": [r.error for r in reps if r.error]}
        if good:
            ordered = sorted(good, key=lambda r: r.mbit_s)
            mid = ordered[(len(ordered) - 1) // 2]  # lower median: a real run, not an average of two
            row.update({
                "mbit_s": mid.mbit_s, "mbit_s_min": ordered[0].mbit_s, "mbit_s_max": ordered[-1].mbit_s,
                "link_mbit_s": mid.link_mbit_s, "cpu_s_per_gib": statistics.median(
                    [r.cpu_s_per_gib for r in good if r.cpu_s_per_gib is not None] or [0]),
                "peak_rss_mib": {k: max(r.peak_rss_mib.get(k, 0) for r in good) for k in mid.peak_rss_mib},
                "notes": list(mid.notes), "median_rep": mid.rep, "machine_busy_cores": mid.machine_busy_cores,
                "own_cores": mid.own_cores,
                "foreign_cores": mid.foreign_cores,
            })
            med[name] = mid.mbit_s
        rows.append(row)
    singles = [med.get(f"tcp-link{i}") for i in links]
    tcp_sum = round(sum(singles), 2) if singles and all(s is not None for s in singles) else None  # type: ignore[arg-type]
    for row in rows:
        if tcp_sum and row.get("mbit_s") and "-link" not in row["name"]:
            row["ratio_to_tcp_sum"] = round(row["mbit_s"] / tcp_sum, 3)
    out: dict[str, Any] = {"single_tcp_sum_mbit_s": tcp_sum, "rows": rows}
    if "mptcp" in med:
        for row in rows:
            if row["kind"] == "sctpbond" and row.get("mbit_s"):
                row["ratio_to_mptcp"] = round(row["mbit_s"] / med["mptcp"], 3)
    return out


def print_table(summary: dict[str, Any], title: str) -> None:
    headers = ["run", "Mbit/s", "per link Mbit/s", "x sum 1-TCP", "x MPTCP", "CPU s/GiB", "RSS MiB snd/rcv",
               "CPUs all/own/others", "notes"]
    body: list[list[str]] = []
    for row in summary["rows"]:
        if row["skipped"]:
            body.append([row["name"], "-", "-", "-", "-", "-", "-", "-", "; ".join(row["notes"])])
            continue
        if "mbit_s" not in row:
            body.append([row["name"], "FAILED", "-", "-", "-", "-", "-", "-", "; ".join(row["errors"])[:120]])
            continue
        spread = (f" ({row['mbit_s_min']:.0f}-{row['mbit_s_max']:.0f})" if row["ok_runs"] > 1 else "")
        rss = row["peak_rss_mib"]
        rss_s = f"{rss.get('sender', 0):.0f}/{rss.get('receiver', 0):.0f}" if "sender" in rss else "-"
        notes = list(row["notes"])
        if row["errors"]:
            notes.append(f"{len(row['errors'])} of {row['runs']} failed")
        body.append([
            row["name"], f"{row['mbit_s']:.1f}{spread}", " ".join(f"{v:.0f}" for v in row["link_mbit_s"]),
            f"{row['ratio_to_tcp_sum']:.3f}" if "ratio_to_tcp_sum" in row else "-",
            f"{row['ratio_to_mptcp']:.3f}" if "ratio_to_mptcp" in row else "-",
            f"{row['cpu_s_per_gib']:.2f}", rss_s,
            "/".join("-" if row.get(k) is None else f"{row[k]:.1f}"
                     for k in ("machine_busy_cores", "own_cores", "foreign_cores")),
            "; ".join(notes),
        ])
    if summary.get("single_tcp_sum_mbit_s"):
        body.append(["sum of tcp-link*", f"{summary['single_tcp_sum_mbit_s']:.1f}", "", "1.000", "", "", "", "", ""])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
        click.echo(title)
        click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for r in body:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i in (0, 2, 8) else "right")
    for r in body:
        table.add_row(*r)
    Console(width=max(150, shutil.get_terminal_size().columns)).print(table)


def plot(runs: list[RunResult], summary: dict[str, Any], out: Path, title: str) -> None:
    """One subplot per run (its median repetition), one line per link, Mbit/s against seconds."""
    try:
        home_cfg = Path(os.environ.get("HOME", "/nonexistent")) / ".config"
        if "MPLCONFIGDIR" not in os.environ and not os.access(home_cfg if home_cfg.exists() else home_cfg.parent,
                                                                 os.W_OK):
            os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="sctpbond-mpl-")  # read-only home (the VM)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib (pip install matplotlib)") from None
    chosen = {row["name"]: row.get("median_rep") for row in summary["rows"] if "mbit_s" in row}
    order = {row["name"]: i for i, row in enumerate(summary["rows"])}
    shown = sorted((r for r in runs if r.ok and chosen.get(r.name) == r.rep and r.series),
                   key=lambda r: order[r.name])
    if not shown:
        raise BenchError("--plot: no successful run to draw")
    cols = 2 if len(shown) > 1 else 1
    nrows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.4 * cols, 2.6 * nrows + 0.6), squeeze=False)
    for ax, r in zip(axes.flat, shown, strict=False):
        t = r.series["t"]
        peak = max((max(ys) for ys in r.series["link_mbit_s"] if ys), default=0.0)
        for i, ys in enumerate(r.series["link_mbit_s"]):
            if i in r.links or (ys and max(ys) > 0.02 * peak):  # skip links that carried only ARP and the like
                ax.plot(t, ys, label=f"link {i}", linewidth=1.1, color=f"C{i % 10}")
        if len(r.links) > 1:
            total = [sum(v) for v in zip(*r.series["link_mbit_s"], strict=True)]
            ax.plot(t, total, label="total", color="black", linewidth=0.9, linestyle="--")
        ax.set_title(f"{r.name}: {r.mbit_s:.0f} Mbit/s", fontsize=10)
        ax.set_xlabel("s")
        ax.set_ylabel("Mbit/s")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="best", framealpha=0.7)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)



def report_title(report: dict[str, Any]) -> str:
    cfg, host = report["config"], report["host"]
    size = f"{cfg['size'] / MiB:g} MiB" if cfg["size"] is not None else f"{cfg['seconds']:g} s"
    return (f"sctpbond bench: {cfg['topology_name']} ({cfg['description']}), {size}, {host['cpus']} CPUs, "
            f"kernel {host['kernel']}")


def replot(json_path: Path, png: Path) -> None:
    """Draw the plot of a --json report again."""
    report = json.loads(json_path.read_text())
    runs = [RunResult(**r) for r in report["runs"]]
    plot(runs, report["summary"], png, report.get("title") or report_title(report))

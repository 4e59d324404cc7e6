"""Per-link throughput, from outside: host a's veth tx counters read through a process parked in its namespace,
sampled while a run's processes live (watch), with a progress line and the machine's CPU use over the run."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from ..units import mbit
from .procs import BenchError, Proc, cpu_jiffies, foreign_cores, proc_cpu_ticks


class Counters:
    """tx_bytes of host a's veth end of each link, from the /proc/<pid>/net/dev of a process parked in host a's
    namespace (procfs shows the network namespace of the process it names).

    Not netlink: a pyroute2 link dump, parsed in Python, cost 2.9 ms per sample on the host and several times that
    under emulation, i.e. about half of one of the SCTP VM's two CPUs at 10 samples a second, taken from the
    CPU-bound transfer being measured. Re-reading a small text file costs 0.02 ms."""

    def __init__(self, net: Any, host: str, ifnames: Sequence[str]) -> None:
        from .topology import NETNS_DIR

        self.ifnames = list(ifnames)
        ns_path = NETNS_DIR / net.ns(host)
        try:
            want = os.stat(ns_path).st_ino
        except FileNotFoundError:
            raise BenchError(f"network namespace {net.ns(host)} vanished") from None
        self._holder = net.popen(host, ["sleep", "infinity"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._fd = -1
        try:
            deadline = time.monotonic() + 10.0
            while not self._entered(want):  # nsenter first runs in our namespace, then execs sleep in host's
                if self._holder.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"cannot park a process in namespace {net.ns(host)} to read its counters")
                time.sleep(0.01)
            self._fd = os.open(f"/proc/{self._holder.pid}/net/dev", os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    def _entered(self, ns_inode: int) -> bool:
        try:
            return os.stat(f"/proc/{self._holder.pid}/ns/net").st_ino == ns_inode
        except OSError:
            return False

    def read(self) -> list[int]:
        from .topology import link_counters  # already loaded with the topology: a dictionary lookup

        found = link_counters(os.pread(self._fd, 1 << 16, 0).decode())
        try:
            return [found[n][1] for n in self.ifnames]
        except KeyError as exc:
            raise BenchError(f"interface {exc.args[0]} disappeared during the benchmark") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._holder.poll() is None:
            self._holder.kill()
        self._holder.wait()


@dataclass
class Series:
    """Per-link Mbit/s over time (each point is the rate over the interval that ends at t)."""

    interval_s: float
    t: list[float] = field(default_factory=list)
    link_mbit_s: list[list[float]] = field(default_factory=list)  # [link][sample]
    machine_busy_cores: float | None = None  # CPUs busy (all processes, kernel included) during the run
    foreign_cores: float | None = None  # CPUs used by other people's processes during the run
    foreign_top: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "t": [round(x, 3) for x in self.t],
                "link_mbit_s": [[round(v, 2) for v in row] for row in self.link_mbit_s]}


ProgressFn = Callable[[float, list[float]], None]


def watch(procs: Sequence[Proc], counters: Counters, *, timeout: float, interval: float, what: str,
          progress: ProgressFn | None = None, stop: Callable[[], bool] | None = None,
          start: tuple[float, list[int]] | None = None) -> tuple[Series, list[int]]:
    """Sample the counters until every process in procs has exited (or timeout: kill them, raise).

    `start` is (monotonic time, counters) read just before the processes were launched; the series' time axis
    starts there. Returns the series and the bytes each link sent over the whole run.
    """
    n = len(counters.ifnames)
    series = Series(interval, link_mbit_s=[[] for _ in range(n)])
    t0, first = start if start is not None else (time.monotonic(), counters.read())
    prev, prev_t = first, t0
    deadline = t0 + timeout
    busy0, total0 = cpu_jiffies()
    procs0, wall0 = proc_cpu_ticks(), time.monotonic()
    try:
        while True:
            done = all(p.finished() for p in procs) or (stop is not None and stop())
            now = time.monotonic()
            cur = counters.read()
            dt = now - prev_t
            if dt > 0:
                rates = [mbit(c - p, dt) for c, p in zip(cur, prev, strict=True)]
                series.t.append(now - t0)
                for i, r in enumerate(rates):
                    series.link_mbit_s[i].append(r)
                if progress is not None:
                    progress(now - t0, rates)
            prev, prev_t = cur, now
            if done:
                break
            if now > deadline:
                running = [p.name for p in procs if not p.finished()]
                raise BenchError(f"{what}: still running after {timeout:.0f} s ({', '.join(running)}); killed")
            time.sleep(max(0.0, interval - (time.monotonic() - now)))
    except BaseException:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait_dead()
        raise
    busy1, total1 = cpu_jiffies()
    series.foreign_cores, series.foreign_top = foreign_cores(procs0, proc_cpu_ticks(), time.monotonic() - wall0)
    if total1 > total0:
        series.machine_busy_cores = round((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1), 2)
    return series, [c - f for c, f in zip(prev, first, strict=True)]


class Progress:
    """One line per second on stderr: run name, elapsed, current total and per-link Mbit/s (then `suffix()`)."""

    def __init__(self, label: str, every: float = 1.0, enabled: bool = True, err: bool = True,
                 suffix: Callable[[], str] | None = None) -> None:
        self.label, self.every, self.enabled, self.err, self.suffix = label, every, enabled, err, suffix
        self._next = every
        self._acc: list[list[float]] = []

    def __call__(self, elapsed: float, rates: list[float]) -> None:
        self._acc.append(rates)
        if not self.enabled or elapsed < self._next:
            return
        self._next = elapsed + self.every
        avg = [sum(col) / len(col) for col in zip(*self._acc, strict=True)]
        self._acc.clear()
        links = " ".join(f"{r:6.0f}" for r in avg)
        more = self.suffix() if self.suffix is not None else ""
        click.echo(f"  {self.label:<16} {elapsed:6.1f} s {sum(avg):8.1f} Mbit/s   links: {links}{more}", err=self.err)


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

The module doubles as the tiny MPTCP/TCP sender and receiver, the data generator and a plot redrawer:
``python -m sctpbond.bench stream-recv|stream-send|gen|plot``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .topology import Topology

import click

from . import __version__
from .errors import SctpbondError, UsageError
from .units import parse_size

GiB = 1 << 30
MiB = 1 << 20
IPPROTO_MPTCP = 262
IPERF_PORT = 5201
BOND_PORT = 7300
MPTCP_PORT = 7400
KNOWN_BASELINES = ("tcp", "tcp-parallel", "tcp-pipe", "mptcp", "sctp", "sctp-parallel")
DEFAULT_BASELINES = "tcp,mptcp,sctp"
SCTPBOND = [sys.executable, "-m", "sctpbond"]
HELPER = [sys.executable, "-m", "sctpbond.bench"]


class BenchError(SctpbondError):
    """A benchmark run could not be set up, did not finish in time, or produced no usable figure."""


# --- small helpers ------------------------------------------------------------------------------------------------


def mbit(nbytes: float, seconds: float) -> float:
    return nbytes * 8 / max(seconds, 1e-9) / 1e6


def _last_line(path: Path | None, default: str = "") -> str:
    if path is None or not path.exists():
        return default
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else default


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise BenchError(f"the {tool} command is missing; install it (apt-get install {package})")


def pipe_of(stream: Any) -> Any:
    """The pipe end of a Popen started with PIPE (never None then; this tells the type checker so)."""
    if stream is None:
        raise BenchError("internal: a process was started without its pipe")
    return stream


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} builds network namespaces and must run as root (try: sudo {what})")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks tear the topology down on `kill` too."""

    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            # A forked child (pyroute2 forks helpers to reach a namespace) inherits this handler: there a
            # SIGTERM must kill, not unwind into our code.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def remove_stale_namespaces() -> list[str]:
    """Remove namespaces left by a bench/demo that was SIGKILLed: names sbb<pid>-a/-b, sbd<pid>-a/-b whose pid
    is gone. A live run's namespaces are never touched."""
    import re

    from pyroute2 import netns

    removed = []
    for name in netns.listnetns():
        m = re.match(r"^sb[bd](\d+)-[ab]$", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            with contextlib.suppress(OSError):
                netns.remove(name)
                removed.append(name)
    return removed


def kernel_has_sctp() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, getattr(socket, "IPPROTO_SCTP", 132)).close()
        return True
    except OSError:
        return False


def kernel_has_mptcp() -> tuple[bool, str]:
    try:
        enabled = Path("/proc/sys/net/mptcp/enabled").read_text().strip()
    except OSError:
        return False, "this kernel has no MPTCP (no net.mptcp.enabled sysctl)"
    if enabled != "1":
        return False, "MPTCP is disabled (sysctl net.mptcp.enabled=0)"
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP).close()
    except OSError as exc:
        return False, f"cannot open an MPTCP socket: {exc.strerror}"
    return True, ""


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
        "kernel_sctp": kernel_has_sctp(),
        "loadavg_at_start": list(os.getloadavg()),
    }


# --- processes --------------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """One started process; finished() reaps it with wait4 to get its own CPU time and peak RSS."""

    name: str
    popen: subprocess.Popen[Any]
    stderr: Path | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    rc: int | None = None
    cpu_s: float = 0.0
    maxrss_kib: int = 0
    rusage: dict[str, float] = field(default_factory=dict)

    def finished(self) -> bool:
        if self.rc is not None:
            return True
        try:
            pid, status, ru = os.wait4(self.popen.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (should not happen): no rusage
            self.rc = self.popen.returncode if self.popen.returncode is not None else -1
            self.ended = time.monotonic()
            return True
        if pid == 0:
            return False
        self.ended = time.monotonic()
        self.rc = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.rc  # keep Popen consistent (its poll() must not wait again)
        self.cpu_s = ru.ru_utime + ru.ru_stime
        self.maxrss_kib = ru.ru_maxrss
        self.rusage = {"user_s": round(ru.ru_utime, 3), "sys_s": round(ru.ru_stime, 3),
                       "voluntary_ctxsw": ru.ru_nvcsw, "involuntary_ctxsw": ru.ru_nivcsw,
                       "minor_faults": ru.ru_minflt}
        return True

    def kill(self) -> None:
        if self.rc is None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()

    def wait_dead(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.finished() and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def wall_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def failure(self) -> str:
        why = _last_line(self.stderr, "no message")
        return f"{self.name} exited with {self.rc}: {why}"


# --- interface counters ----------------------------------------------------------------------------------------


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


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def proc_cpu_ticks() -> dict[int, tuple[int, int, str]]:
    """pid -> (utime+stime clock ticks, ppid, comm) for every process: to tell our CPU from everyone else's."""
    out: dict[int, tuple[int, int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(rest[11]) + int(rest[12]), int(rest[1]), comm)
    return out


def foreign_cores(before: dict[int, tuple[int, int, str]], after: dict[int, tuple[int, int, str]],
                  seconds: float) -> tuple[float, list[str]]:
    """CPUs used during the interval by processes that are neither ours (this process and its descendants) nor
    kernel threads (whose network work, e.g. ksoftirqd, is part of the measurement); and the top users."""
    me = os.getpid()

    def ours(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == me:
                return True
            pid = after.get(pid, before.get(pid, (0, 0, "")))[1]
            seen += 1
        return False

    hz = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid, (ticks, ppid, comm) in after.items():
        if pid == 2 or ppid == 2 or ours(pid):
            continue
        delta = (ticks - before.get(pid, (0, 0, ""))[0]) / hz
        if delta > 0:
            used[comm] = used.get(comm, 0.0) + delta
    total = sum(used.values()) / max(seconds, 1e-9)
    top = [f"{c} {v / max(seconds, 1e-9):.2f}" for c, v in sorted(used.items(), key=lambda kv: -kv[1])[:3]
           if v / max(seconds, 1e-9) >= 0.05]
    return round(total, 2), top


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


# --- results -------------------------------------------------------------------------------------------------------


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


# --- the benchmark -------------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    topology: str
    transports: list[str]
    baselines: list[str]
    size: int | None
    seconds: float | None
    paths: int | None
    data: str = "zero"
    repeat: int = 1
    interval: float = 0.1
    timeout: float | None = None
    bond_opts: list[str] = field(default_factory=list)
    profile_dir: str | None = None
    progress: bool = True
    progress_every: float = 1.0
    progress_err: bool = True  # progress lines on stderr (bench) or stdout (demo)
    encrypted: bool = False  # also run sctpbond with a key (AES-256-GCM), to measure the cost of encryption


class Bench:
    def __init__(self, net: Any, cfg: BenchConfig, workdir: Path) -> None:
        self.net, self.cfg, self.workdir = net, cfg, workdir
        k = cfg.paths or net.n_links
        self.links = list(range(k))
        self.counters = Counters(net, "a", [net.ifname("a", i) for i in range(net.n_links)])
        self._feeders: list[Proc] = []
        self._seq = 0

    def close(self) -> None:
        for p in self._feeders:
            p.kill()
        for p in self._feeders:
            p.wait_dead(2.0)
        self.counters.close()

    # -- budgets
    def _nominal_mbit(self, links: Sequence[int]) -> float:
        # Unshaped links: assume a modest 1 Gbit/s so the timeout is generous rather than tight.
        return sum(self.net.topo.links[i].rate_mbit or 1000.0 for i in links)

    def _timeout(self, links: Sequence[int], nbytes: int | None = None) -> float:
        if self.cfg.timeout:
            return self.cfg.timeout
        # Slack for process start-up: ~0.2 s here, but 10-40 s under software emulation (the SCTP VM).
        slack = 240.0 if os.environ.get("SCTPBOND_IN_VM") else 30.0
        if self.cfg.seconds is not None:
            return self.cfg.seconds * 3 + slack
        size = nbytes if nbytes is not None else (self.cfg.size or 0)
        return size * 8 / (self._nominal_mbit(links) * 1e6) * 4 + slack

    def _tmp(self, stem: str) -> Path:
        self._seq += 1
        return self.workdir / f"{self._seq:03d}-{stem}"

    # -- processes
    def _popen(self, host: str | None, name: str, argv: list[str], **kw: Any) -> Proc:
        err = self._tmp(f"{name}.err")
        with open(err, "wb") as ferr:
            kw.setdefault("stdin", subprocess.DEVNULL)
            kw.setdefault("stdout", subprocess.DEVNULL)
            if host is None:
                popen = subprocess.Popen(argv, stderr=ferr, **kw)
            else:
                popen = self.net.popen(host, argv, stderr=ferr, **kw)
        return Proc(name, popen, err)

    def _feeder(self) -> Proc:
        """The data source, writing into a pipe: SIZE bytes, or for --seconds S, as much as fits in S seconds."""
        cfg = self.cfg
        if cfg.data == "zero" and cfg.size is not None:
            argv = ["head", "-c", str(cfg.size), "/dev/zero"]
        else:
            # For --seconds the generator starts its clock once the reader has taken a first block, so the
            # reader's start-up time (long under emulation) does not eat into the measured interval.
            argv = HELPER + ["gen", *(["--random"] if cfg.data == "random" else [])] + (
                ["--size", str(cfg.size)] if cfg.size is not None else ["--seconds", str(cfg.seconds)])
        self._feeders = [p for p in self._feeders if not p.finished()]  # reap the previous runs' feeders
        proc = self._popen(None, "feeder", argv, stdout=subprocess.PIPE)
        self._feeders.append(proc)
        return proc

    def _wait_listening(self, port: int, proc: Proc, timeout: float = 60.0) -> None:
        """Until proc listens on `port` in host b; a listener that dies is noticed at once."""
        def alive() -> None:
            if proc.finished():
                raise BenchError(proc.failure())

        if not self.net.wait_listening("b", port, timeout, check=alive):
            raise BenchError(f"nothing listens on port {port} in host b after {timeout:.0f} s")

    def _mark(self) -> tuple[float, list[int]]:
        """Time and counters just before a run's sender starts."""
        return time.monotonic(), self.counters.read()

    def _watch(self, procs: Sequence[Proc], label: str, links: Sequence[int], start: tuple[float, list[int]],
               nbytes: int | None = None) -> tuple[Series, list[int]]:
        prog = Progress(label, every=self.cfg.progress_every, enabled=self.cfg.progress, err=self.cfg.progress_err)
        return watch(procs, self.counters, timeout=self._timeout(links, nbytes), interval=self.cfg.interval,
                     what=label, progress=prog, start=start)

    def _profile(self, run: str, procs: dict[str, Proc]) -> list[Proc]:
        if not self.cfg.profile_dir:
            return []
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(self.cfg.profile_dir)
        out.mkdir(parents=True, exist_ok=True)
        started = []
        for side, p in procs.items():
            argv = [spy, "record", "--pid", str(p.popen.pid), "--rate", "97", "--nonblocking", "--threads",
                    "--format", "raw", "--output", str(out / f"{run}-{side}.txt")]
            started.append(self._popen(None, f"py-spy-{side}", argv))
        return started

    # -- runs
    def iperf_single(self, link: int, proto: str, rep: int) -> RunResult:
        """One iperf3 flow on one link alone (TCP, or SCTP with proto='sctp')."""
        res = RunResult(f"{proto}-link{link}", proto, rep, links=[link])
        cfg = self.cfg
        port = IPERF_PORT + link
        amount = ["-n", str(max(1, cfg.size // len(self.links)))] if cfg.size is not None else ["-t", f"{cfg.seconds}"]
        extra = ["--sctp"] if proto == "sctp" else []
        server = self._popen("b", "iperf3 server", ["iperf3", "-s", "-1", "-p", str(port),
                                                    "-B", self.net.addr("b", link)])
        try:
            self._wait_listening(port, proc=server)  # iperf3's control connection is TCP, even for --sctp
            out = self._tmp("iperf3.json")
            start = self._mark()
            with open(out, "wb") as fout:
                client = self._popen("a", "iperf3 client", ["iperf3", "-c", self.net.addr("b", link), "-p", str(port),
                                                            "-J", *amount, *extra], stdout=fout)
            nbytes = cfg.size // len(self.links) if cfg.size is not None else None
            series, link_bytes = self._watch([client, server], res.name, [link], start, nbytes)
        finally:
            server.kill()
        data = _iperf_json(out)
        if data.get("error"):
            raise BenchError(f"{res.name}: iperf3: {data['error']}")
        if client.rc != 0:
            raise BenchError(f"{res.name}: {client.failure()}")
        end = data.get("end", {})
        recv = end.get("sum_received") or end.get("sum") or {}
        sent = end.get("sum_sent") or {}
        res.detail = {"retransmits": sent.get("retransmits"), "iperf3_sender_mbit_s": round(
            sent.get("bits_per_second", 0) / 1e6, 2), "cc": end.get("sender_tcp_congestion")}
        res.wall_s = client.wall_s
        res.finish(int(recv.get("bytes", 0)), float(recv.get("seconds", 0)), link_bytes, series,
                   {"sender": client, "receiver": server})
        return res

    def iperf_parallel(self, proto: str, rep: int) -> RunResult:
        """One iperf3 flow per link, all at once (TCP, or SCTP with proto='sctp')."""
        res = RunResult(f"{proto}-parallel", f"{proto}-parallel", rep, links=list(self.links))
        cfg = self.cfg
        servers, clients, outs = [], [], []
        try:
            for i in self.links:
                servers.append(self._popen("b", f"iperf3 server {i}", ["iperf3", "-s", "-1", "-p", str(IPERF_PORT + i),
                                                                       "-B", self.net.addr("b", i)]))
            for i, s in zip(self.links, servers, strict=True):
                self._wait_listening(IPERF_PORT + i, proc=s)
            amount = (["-n", str(max(1, cfg.size // len(self.links)))] if cfg.size is not None
                      else ["-t", f"{cfg.seconds}"])
            extra = ["--sctp"] if proto == "sctp" else []
            start = self._mark()
            for i in self.links:
                out = self._tmp(f"iperf3-{i}.json")
                outs.append(out)
                with open(out, "wb") as fout:
                    clients.append(self._popen("a", f"iperf3 client {i}", ["iperf3", "-c", self.net.addr("b", i),
                                                                           "-p", str(IPERF_PORT + i), "-J", *amount,
                                                                           *extra],
                                               stdout=fout))
            series, link_bytes = self._watch(clients + servers, res.name, self.links, start, cfg.size)
        finally:
            for s in servers:
                s.kill()
        total_bytes, per_flow = 0, []
        seconds = 0.0
        for i, (c, out) in enumerate(zip(clients, outs, strict=True)):
            data = _iperf_json(out)
            if data.get("error") or c.rc != 0:
                raise BenchError(f"{res.name}: link {i}: {data.get('error') or c.failure()}")
            recv = data.get("end", {}).get("sum_received", {})
            total_bytes += int(recv.get("bytes", 0))
            seconds = max(seconds, float(recv.get("seconds", 0)))
            per_flow.append(round(recv.get("bits_per_second", 0) / 1e6, 2))
        res.detail = {"per_flow_mbit_s": per_flow}
        procs = {f"sender{i}": c for i, c in enumerate(clients)} | {f"receiver{i}": s for i, s in enumerate(servers)}
        res.finish(total_bytes, seconds, link_bytes, series, procs)
        # Sum of per-flow rates: each flow is timed by its own receiver (with -n they end at different times).
        res.mbit_s = round(sum(per_flow), 2)
        for i, rate in zip(self.links, per_flow, strict=True):
            res.link_mbit_s[i] = rate
        return res

    def _mptcp_setup(self) -> None:
        net = self.net
        cmds = [("a", ["ip", "mptcp", "endpoint", "flush"]), ("b", ["ip", "mptcp", "endpoint", "flush"])]
        # As the kernel's mptcp selftests do: raise the limits on both ends, and give the client one
        # "subflow" endpoint per extra link (bound to its device), so the in-kernel path manager opens one
        # subflow per link to the server's address.
        for host in ("a", "b"):
            cmds.append((host, ["ip", "mptcp", "limits", "set", "subflow", "8", "add_addr_accepted", "8"]))
        for i in self.links[1:]:
            cmds.append(("a", ["ip", "mptcp", "endpoint", "add", net.addr("a", i), "dev", net.ifname("a", i),
                               "subflow"]))
        for host, argv in cmds:
            try:
                r = net.run(host, argv, capture_output=True, text=True, timeout=30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"mptcp setup: `{' '.join(argv)}` did not finish in 30 s") from None
            if r.returncode != 0:
                raise BenchError(f"mptcp setup failed: {' '.join(argv)}: {r.stderr.strip() or r.returncode}")

    def mptcp(self, rep: int) -> RunResult:
        """Kernel MPTCP, one subflow per link, fed from the same kind of pipe as sctpbond."""
        self._mptcp_setup()
        res = self._pipe_stream(RunResult("mptcp", "mptcp", rep, links=list(self.links)), IPPROTO_MPTCP)
        self._check_all_links(res)
        return res

    def tcp_pipe(self, rep: int) -> RunResult:
        """One plain TCP connection on link 0 fed from the same pipe, by the same tiny Python sender as MPTCP:
        the reference for sctpbond's own overhead (iperf3 sends from memory and never reads a pipe)."""
        return self._pipe_stream(RunResult("tcp-pipe", "tcp-pipe", rep, links=[self.links[0]]), socket.IPPROTO_TCP)

    def _pipe_stream(self, res: RunResult, proto: int) -> RunResult:
        what = "mptcp" if proto == IPPROTO_MPTCP else "tcp"
        out = self._tmp(f"{what}-recv.json")
        with open(out, "wb") as fout:
            recv = self._popen("b", f"{what} receiver", HELPER + ["stream-recv", "--port", str(MPTCP_PORT),
                                                                  "--proto", str(proto)], stdout=fout)
        feeder = None
        try:
            self._wait_listening(MPTCP_PORT, proc=recv)
            start = self._mark()
            feeder = self._feeder()
            send = self._popen("a", f"{what} sender", HELPER + ["stream-send", self.net.addr("b", res.links[0]),
                                                                "--port", str(MPTCP_PORT), "--proto", str(proto)],
                               stdin=feeder.popen.stdout)
            pipe_of(feeder.popen.stdout).close()  # the sender holds the pipe now: the feeder gets SIGPIPE if it dies
            series, link_bytes = self._watch([send, recv], res.name, res.links, start)
        finally:
            recv.kill()
            if feeder is not None:
                feeder.kill()
        for p in (send, recv):
            if p.rc != 0:
                raise BenchError(f"{res.name}: {p.failure()}")
        try:
            data = json.loads(out.read_text())
        except (OSError, ValueError):
            raise BenchError(f"{res.name}: the receiver reported nothing") from None
        if self.cfg.size is not None and data["bytes"] != self.cfg.size:
            raise BenchError(f"{res.name}: received {data['bytes']} bytes of {self.cfg.size}")
        res.wall_s = send.wall_s
        if proto == IPPROTO_MPTCP:
            res.detail = {"subflows_seen": data.get("subflows")}
        res.finish(data["bytes"], data["seconds"], link_bytes, series, {"sender": send, "receiver": recv})
        return res

    def _check_all_links(self, res: RunResult) -> None:
        idle = [i for i in res.links if res.link_bytes[i] < max(1 << 20, res.bytes // (100 * len(res.links)))]
        if idle:
            res.notes.append(f"link(s) {', '.join(map(str, idle))} carried (almost) nothing")

    def sctpbond_aes(self, transport: str, rep: int) -> RunResult:
        """sctpbond with a pre-shared key: authenticated and every frame sealed with AES-256-GCM."""
        return self.sctpbond(transport, rep, keyed=True)

    def sctpbond(self, transport: str, rep: int, keyed: bool = False) -> RunResult:
        name = f"sctpbond-{transport}" + ("-aes" if keyed else "")
        res = RunResult(name, "sctpbond", rep, transport=transport, links=list(self.links))
        net, cfg = self.net, self.cfg
        lstats, cstats = self._tmp("listen.json"), self._tmp("connect.json")
        common = ["-p", str(BOND_PORT), "-t", transport, *cfg.bond_opts]
        if keyed:
            keyfile = self._tmp("key")
            keyfile.write_text(os.urandom(32).hex())
            keyfile.chmod(0o600)  # sctpbond refuses a key file others can read
            common += ["--key-file", str(keyfile)]
        listener = self._popen("b", "sctpbond listen", SCTPBOND + ["listen", *common, "-o", "/dev/null", "-N",
                                                                   "--stats-json", str(lstats)])
        feeder = None
        spies: list[Proc] = []
        try:
            self._wait_listening(BOND_PORT, proc=listener)
            start = self._mark()
            feeder = self._feeder()
            addrs = [net.addr("b", i) for i in self.links]
            client = self._popen("a", "sctpbond connect", SCTPBOND + ["connect", *common, "-o", "/dev/null",
                                                                      "--stats-json", str(cstats), "--no-auto", *addrs],
                                 stdin=feeder.popen.stdout)
            pipe_of(feeder.popen.stdout).close()
            spies = self._profile(f"{res.name}-{rep}", {"connect": client, "listen": listener})
            series, link_bytes = self._watch([client, listener], res.name, self.links, start)
        finally:
            listener.kill()
            if feeder is not None:
                feeder.kill()
            for s in spies:
                s.wait_dead(10.0)
                s.kill()
        for p in (client, listener):
            if p.rc != 0:
                raise BenchError(f"{res.name}: {p.failure()}")
        try:
            ls, cs = json.loads(lstats.read_text()), json.loads(cstats.read_text())
        except (OSError, ValueError):
            raise BenchError(f"{res.name}: no --stats-json written") from None
        got = int(ls.get("bytes_received", 0))
        expected = cfg.size if cfg.size is not None else int(cs.get("bytes_sent", -1))
        if got != expected:
            raise BenchError(f"{res.name}: listener received {got} bytes, expected {expected}")
        res.wall_s = client.wall_s
        res.detail = {"listen_stats": ls, "connect_stats": cs,
                      "path_recv_mbit_s": [p.get("recv_mbit_s") for p in sorted(ls.get("paths", []),
                                                                                key=lambda p: p["id"])]}
        res.finish(got, float(ls["elapsed_s"]), link_bytes, series, {"sender": client, "receiver": listener})
        if cs.get("resent_bytes"):
            res.notes.append(f"{cs['resent_bytes']} bytes resent")
        self._check_all_links(res)
        return res


def _iperf_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {"error": "no JSON output"}


# --- planning, table, plot ---------------------------------------------------------------------------------------


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
        ok, why = kernel_has_mptcp()
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


# --- orchestration ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_session(topo: Topology, cfg: BenchConfig, what: str) -> Iterator[Bench]:
    """Build the topology and a Bench in a scratch directory; always tear both down (Ctrl-C, SIGTERM too)."""
    from .topology import Network  # pyroute2 is slow to import: only when a topology is built

    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix=f"sctpbond-{what}-") as tmp:
        net = Network(topo, prefix=f"sb{what[0]}{os.getpid()}")
        try:
            net.up()
            bench = Bench(net, cfg, Path(tmp))
            try:
                yield bench
            finally:
                bench.close()
        finally:
            net.down()


def run_bench(cfg: BenchConfig, *, json_out: Path | None = None, plot_out: Path | None = None,
              argv: Sequence[str] = ()) -> dict[str, Any]:
    from .topology import load

    _require_root("sctpbond bench")
    for tool, pkg in (("iperf3", "iperf3"), ("nsenter", "util-linux"), ("ss", "iproute2"), ("ip", "iproute2"),
                      ("nft", "nftables")):
        if tool == "iperf3" and not ({"tcp", "tcp-parallel", "sctp", "sctp-parallel"} & set(cfg.baselines)):
            continue
        _need(tool, pkg)
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
                    r = getattr(bench, method)(*args, rep)
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
    title = _title(report)
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


def _title(report: dict[str, Any]) -> str:
    cfg, host = report["config"], report["host"]
    size = f"{cfg['size'] / MiB:g} MiB" if cfg["size"] is not None else f"{cfg['seconds']:g} s"
    return (f"sctpbond bench: {cfg['topology_name']} ({cfg['description']}), {size}, {host['cpus']} CPUs, "
            f"kernel {host['kernel']}")


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
def bench(topology: str, transport: str, size_text: str | None, seconds: float | None, json_out: Path | None,
          plot_out: Path | None, baselines: str, paths: int | None, data: str, repeat: int, interval: float,
          timeout: float | None, bond_opts: tuple[str, ...], profile_dir: str | None, encrypted: bool,
          quiet: bool) -> None:
    """Measure sctpbond against one TCP per link, MPTCP and plain SCTP on an emulated topology.

    Example: sctpbond bench --topology 4x200 --size 512M --json out.json --plot out.png
    """
    from .cli import friendly_errors

    @friendly_errors
    def go() -> None:
        if size_text is not None and seconds is not None:
            raise UsageError("give --size or --seconds, not both")
        size = parse_size(size_text, "--size") if size_text is not None else (None if seconds else 256 * MiB)
        if size is not None and size < MiB:
            raise UsageError("--size must be at least 1M")
        transports = {"auto": ["tcp", "sctp"] if kernel_has_sctp() else ["tcp"], "both": ["tcp", "sctp"]}.get(
            transport, [transport])
        if transports == ["sctp"] and not kernel_has_sctp():
            raise UsageError("--transport sctp: this kernel has no SCTP (try `modprobe sctp`, or the VM)")
        if profile_dir and not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()):
            raise UsageError("--profile needs py-spy (pip install py-spy)")
        cfg = BenchConfig(topology=topology, transports=transports,
                          baselines=_split_list(baselines, KNOWN_BASELINES, "baseline"), size=size,
                          seconds=seconds, paths=paths, data=data, repeat=repeat, interval=interval,
                          timeout=timeout, bond_opts=list(bond_opts), profile_dir=profile_dir, progress=not quiet,
                          encrypted=encrypted)
        run_bench(cfg, json_out=json_out, plot_out=plot_out, argv=["sctpbond", *sys.argv[1:]])

    go()


# --- helper processes: MPTCP/TCP sender and receiver, data generator ---------------------------------------------


def _stream_recv(port: int, proto: int) -> None:
    """Accept one MPTCP (or TCP) connection, discard what it sends, print {"bytes", "seconds"} (accept to EOF)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    srv.settimeout(60)
    conn, _ = srv.accept()
    conn.settimeout(120)
    t0 = time.monotonic()
    buf = bytearray(1 << 20)
    total = calls = 0
    subflows = None
    while n := conn.recv_into(buf):
        total += n
        calls += 1
        if proto == IPPROTO_MPTCP and calls % 256 == 1:
            with contextlib.suppress(OSError):
                # struct mptcp_info (SOL_MPTCP=284, MPTCP_INFO=1): byte 0 is mptcpi_subflows, the subflows
                # besides the initial one; keep the most seen (they close at the end).
                seen = conn.getsockopt(284, 1, 64)[0] + 1
                subflows = max(subflows or 0, seen)
    seconds = time.monotonic() - t0
    conn.close()
    print(json.dumps({"bytes": total, "seconds": seconds, "subflows": subflows}), flush=True)


def _stream_send(addr: str, port: int, proto: int) -> None:
    """Send stdin over one MPTCP (or TCP) connection, then wait for the receiver to close (all delivered)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.settimeout(10)
    sock.connect((addr, port))
    sock.settimeout(None)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.fcntl(0, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    while n := os.readv(0, [buf]):
        sock.sendall(view[:n])
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    sock.close()


def _wait_reader_started(fd: int, limit: float = 600.0) -> None:
    """Block until the reader of pipe fd has taken some of what is in it (FIONREAD falls), or `limit` passes.

    The reader may have grown the pipe to hold our whole first block, so a completed write proves nothing."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return
    first = buf[0]
    deadline = time.monotonic() + limit
    while first and time.monotonic() < deadline:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        if buf[0] < first:
            return
        time.sleep(0.005)


def _gen(size: int | None, seconds: float | None, random_data: bool) -> None:
    """Write size bytes (or for `seconds`) of zeros or random data to stdout."""
    block = bytearray(1 << 20)
    deadline = None
    left = size if size is not None else -1
    try:
        while left != 0 and (deadline is None or time.monotonic() < deadline):
            n = len(block) if left < 0 else min(left, len(block))
            view = memoryview(os.urandom(n) if random_data else block)[:n]
            while view:
                view = view[os.write(1, view):]
            if left > 0:
                left -= n
            if deadline is None and seconds is not None:
                _wait_reader_started(1)
                deadline = time.monotonic() + seconds
    except BrokenPipeError:
        pass


def _helper_main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sctpbond.bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("stream-recv")
    r.add_argument("--port", type=int, default=MPTCP_PORT)
    r.add_argument("--proto", type=int, default=IPPROTO_MPTCP)
    s = sub.add_parser("stream-send")
    s.add_argument("addr")
    s.add_argument("--port", type=int, default=MPTCP_PORT)
    s.add_argument("--proto", type=int, default=IPPROTO_MPTCP)
    pl = sub.add_parser("plot", help="redraw the plot of a --json report")
    pl.add_argument("json")
    pl.add_argument("png")
    g = sub.add_parser("gen")
    g.add_argument("--size", type=int)
    g.add_argument("--seconds", type=float)
    g.add_argument("--random", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "stream-recv":
            _stream_recv(a.port, a.proto)
        elif a.cmd == "stream-send":
            _stream_send(a.addr, a.port, a.proto)
        elif a.cmd == "plot":
            report = json.loads(Path(a.json).read_text())
            runs = [RunResult(**r) for r in report["runs"]]
            plot(runs, report["summary"], Path(a.png), report.get("title") or _title(report))
        else:
            _gen(a.size, a.seconds, a.random)
    except OSError as exc:
        print(f"{a.cmd}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _helper_main(sys.argv[1:])

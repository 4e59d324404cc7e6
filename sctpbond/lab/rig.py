"""The rig a lab run works on: a built topology with host a's link counters and a scratch directory, and the
means to start processes in it, wait for their listeners, feed them data and watch them (class Bench);
bench_session builds one and always tears it down."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .counters import Counters, Progress, Series, watch
from .procs import HELPER, BenchError, Proc, pipe_of

if TYPE_CHECKING:
    from .topology import Topology


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
    """A built topology (`net`), the counters of host a's link ends, and a scratch directory (`workdir`): what
    every recipe in baselines.py, the demo and bench-failover run their processes on."""

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

    def tmp(self, stem: str) -> Path:
        self._seq += 1
        return self.workdir / f"{self._seq:03d}-{stem}"

    # -- processes
    def popen(self, host: str | None, name: str, argv: list[str], **kw: Any) -> Proc:
        """Start argv in host a or b (None: here), its stderr to a file of the scratch directory."""
        err = self.tmp(f"{name}.err")
        with open(err, "wb") as ferr:
            kw.setdefault("stdin", subprocess.DEVNULL)
            kw.setdefault("stdout", subprocess.DEVNULL)
            if host is None:
                popen = subprocess.Popen(argv, stderr=ferr, **kw)
            else:
                popen = self.net.popen(host, argv, stderr=ferr, **kw)
        return Proc(name, popen, err)

    def feeder(self) -> Proc:
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
        proc = self.popen(None, "feeder", argv, stdout=subprocess.PIPE)
        self._feeders.append(proc)
        return proc

    def fed(self, name: str, argv: list[str]) -> tuple[Proc, Proc]:
        """A new feeder, and argv started in host a reading its pipe: (feeder, sender)."""
        feeder = self.feeder()
        try:
            sender = self.popen("a", name, argv, stdin=feeder.popen.stdout)
        except BaseException:
            feeder.kill()
            raise
        finally:
            pipe_of(feeder.popen.stdout).close()  # the sender holds the pipe now: the feeder gets SIGPIPE if it dies
        return feeder, sender

    def wait_listening(self, port: int, proc: Proc, timeout: float = 60.0) -> None:
        """Until proc listens on `port` in host b; a listener that dies is noticed at once."""
        def alive() -> None:
            if proc.finished():
                raise BenchError(proc.failure())

        if not self.net.wait_listening("b", port, timeout, check=alive):
            raise BenchError(f"nothing listens on port {port} in host b after {timeout:.0f} s")

    def mark(self) -> tuple[float, list[int]]:
        """Time and counters just before a run's sender starts."""
        return time.monotonic(), self.counters.read()

    def watch(self, procs: Sequence[Proc], label: str, links: Sequence[int], start: tuple[float, list[int]],
              nbytes: int | None = None) -> tuple[Series, list[int]]:
        prog = Progress(label, every=self.cfg.progress_every, enabled=self.cfg.progress, err=self.cfg.progress_err)
        return watch(procs, self.counters, timeout=self._timeout(links, nbytes), interval=self.cfg.interval,
                     what=label, progress=prog, start=start)

    def profile(self, run: str, procs: dict[str, Proc]) -> list[Proc]:
        if not self.cfg.profile_dir:
            return []
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(self.cfg.profile_dir)
        out.mkdir(parents=True, exist_ok=True)
        started = []
        for side, p in procs.items():
            argv = [spy, "record", "--pid", str(p.popen.pid), "--rate", "97", "--nonblocking", "--threads",
                    "--format", "raw", "--output", str(out / f"{run}-{side}.txt")]
            started.append(self.popen(None, f"py-spy-{side}", argv))
        return started


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


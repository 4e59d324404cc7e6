"""The processes the lab starts: each one's exit code, CPU time and peak RSS (wait4), what it wrote, and the CPU
the rest of the machine used meanwhile (/proc)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SctpbondError, UsageError

SCTPBOND = [sys.executable, "-m", "sctpbond"]  # the product, run as a user runs it
HELPER = [sys.executable, "-m", "sctpbond.lab.helper"]  # the lab's own sender, receiver and data generator


class BenchError(SctpbondError):
    """A benchmark run could not be set up, did not finish in time, or produced no usable figure."""


def _last_line(path: Path | None, default: str = "") -> str:
    if path is None or not path.exists():
        return default
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else default


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise BenchError(f"the {tool} command is missing; install it (apt-get install {package})")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} builds network namespaces and must run as root (try: sudo {what})")


def pipe_of(stream: Any) -> Any:
    """The pipe end of a Popen started with PIPE (never None then; this tells the type checker so)."""
    if stream is None:
        raise BenchError("internal: a process was started without its pipe")
    return stream


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

    def failure(self, why: str | None = None) -> str:
        """How it ended, for an error message: the exit code and `why`, else the last line of its stderr."""
        return f"{self.name} exited with {self.rc}: {why or _last_line(self.stderr, 'no message')}"


def read_json(path: Path, what: str, *procs: Proc) -> dict[str, Any]:
    """The JSON object a run's tool wrote to `path` (its figures: --stats-json, iperf3 -J, the stream receiver's
    line), once `procs` have exited. One error, `what: ...`, for the first thing wrong: a process that failed
    (with the tool's own "error" from the JSON, where iperf3 -J puts it instead of stderr), no JSON in the file,
    or an "error" in it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        data = None
    why = data.get("error") if data is not None else None
    for p in procs:
        if p.rc != 0:
            raise BenchError(f"{what}: {p.failure(why)}")
    if data is None:
        raise BenchError(f"{what}: no JSON in {path.name}")
    if why:
        raise BenchError(f"{what}: {why}")
    return data


def stats_paths(stats: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The per-path entries of an sctpbond --stats-json, by path id, in id order. `connect` numbers the paths
    given on its command line in their order (0, 1, ...); those it adds itself come after."""
    return {p["id"]: p for p in sorted(stats.get("paths", []), key=lambda p: p["id"])}


# --- CPU accounting ------------------------------------------------------------------------------------------------


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

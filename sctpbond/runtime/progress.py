"""Live progress on stderr (rich): bytes, rate, ETA when the input size is known, and per-path rates.

Shown by default only when stderr is a terminal (`--progress/--no-progress` force it); it reads a snapshot of the
session twice a second and never touches the data path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

Snapshot = Callable[[], dict]


def _path_rates(prev: dict, cur: dict, dt: float) -> str:
    """'p0 198 · p1 201 Mbit/s' from two snapshots (bytes both ways per path)."""
    parts = []
    for pid, (label, moved, alive) in sorted(cur["paths"].items()):
        before = prev["paths"].get(pid, (label, moved, alive))[1]
        rate = (moved - before) * 8 / max(dt, 1e-9) / 1e6
        parts.append(f"p{pid} {rate:.0f}" if alive else f"p{pid} down")
    return (" · ".join(parts) + " Mbit/s") if parts else "no path yet"


class ProgressDisplay:
    def __init__(self, snapshot: Snapshot, *, total: int | None, sending: bool, interval: float = 0.5,
                 console: Console | None = None) -> None:
        self.snapshot, self.total, self.sending, self.interval = snapshot, total, sending, interval
        self.console = console or Console(stderr=True)
        columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[paths]}")]
        self._progress = Progress(*columns, console=self.console, transient=False, refresh_per_second=4)
        self._task = self._progress.add_task("sent" if sending else "received", total=total, paths="")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> None:
        self._progress.start()
        self._thread.start()

    def _done_bytes(self, snap: dict) -> int:
        return snap["acked"] if self.sending else snap["received"]

    def _loop(self) -> None:
        prev, t_prev = self.snapshot(), time.monotonic()
        while not self._stop.wait(self.interval):
            cur, now = self.snapshot(), time.monotonic()
            self._progress.update(self._task, completed=self._done_bytes(cur),
                                  paths=_path_rates(prev, cur, now - t_prev))
            prev, t_prev = cur, now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        snap = self.snapshot()
        self._progress.update(self._task, completed=self._done_bytes(snap))
        self._progress.stop()

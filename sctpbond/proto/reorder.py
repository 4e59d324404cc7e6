"""Receiver reorder buffer: byte ranges arrive in any order over any path, leave in stream order.

Like aioquic's stream receive buffer, keyed by byte offset: duplicates (resends after a path died, or
opportunistic reinjection) are dropped or trimmed, in-order data takes a fast path that stores nothing, and the
amount held is capped so a peer (or a stalled path) cannot make us grow without bound.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..errors import RemoteProtocolError

Chunk = bytes | bytearray | memoryview


@dataclass
class ReorderStats:
    duplicates: int = 0  # ranges dropped entirely because already held or delivered
    duplicate_bytes: int = 0
    peak_buffered: int = 0


class ReorderBuffer:
    """Accepts (offset, payload) ranges; `pop_ready()` returns the in-order prefix that became available.

    `window` bounds how far past the delivered point data may lie: offset + len <= base + window, where base is
    what the application has consumed (acknowledged). A peer that exceeds it violates the protocol. Because
    ranges never extend past base + window and held ranges are kept disjoint, buffered bytes <= window.
    """

    def __init__(self, window: int) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.next_offset = 0  # everything below has been handed out by pop_ready()
        self.consumed = 0  # everything below has been written by the application (see consume())
        self.buffered = 0
        self._held: dict[int, Chunk] = {}  # early ranges by offset, never overlapping
        self._starts: list[int] = []  # their offsets, sorted
        self._ready: list[Chunk] = []
        self.stats = ReorderStats()

    def add(self, offset: int, payload: Chunk) -> bool:
        """Take one range. Returns True if it produced in-order data (pop_ready() is non-empty)."""
        size = len(payload)
        end = offset + size
        if size == 0 or offset < 0:
            raise RemoteProtocolError(f"empty or negative DATA range at {offset}")
        if end > self.consumed + self.window:
            raise RemoteProtocolError(
                f"DATA beyond the receive window (ends at {end}, window ends at {self.consumed + self.window})"
            )
        if end <= self.next_offset:
            self._dup(size)
            return False
        if offset < self.next_offset:  # overlaps what we already have: keep only the new tail
            payload = memoryview(payload)[self.next_offset - offset :]
            offset = self.next_offset
        if offset == self.next_offset:
            self._emit(payload)
            self._drain()
            return True
        if self._store(offset, payload) is None:
            self._dup(size)
            return False
        self.stats.peak_buffered = max(self.stats.peak_buffered, self.buffered + self.unconsumed)
        return False

    def _store(self, offset: int, payload: Chunk) -> Chunk | None:
        """Hold an early range, keeping held ranges disjoint (so held bytes <= window): the part already held by
        a neighbour is cut off, neighbours the new range covers entirely are replaced. None: nothing new."""
        starts, held = self._starts, self._held
        end = offset + len(payload)
        i = bisect.bisect_right(starts, offset)
        if i:
            prev = starts[i - 1]
            prev_end = prev + len(held[prev])
            if prev_end >= end:
                return None
            if prev_end > offset:
                payload = memoryview(payload)[prev_end - offset :]
                offset = prev_end
        i = bisect.bisect_left(starts, offset)
        while i < len(starts) and starts[i] < end:
            nxt = starts[i]
            nxt_end = nxt + len(held[nxt])
            if nxt_end <= end:  # wholly covered by the new range
                self.buffered -= len(held.pop(nxt))
                del starts[i]
                continue
            payload = memoryview(payload)[: nxt - offset]
            end = nxt
            break
        if end <= offset:
            return None
        starts.insert(i, offset)
        held[offset] = payload
        self.buffered += len(payload)
        return payload

    def _dup(self, size: int) -> None:
        self.stats.duplicates += 1
        self.stats.duplicate_bytes += size

    def _emit(self, payload: Chunk) -> None:
        self._ready.append(payload)
        self.next_offset += len(payload)

    def _drain(self) -> None:
        """Move held ranges that now touch next_offset to the ready list."""
        starts, held = self._starts, self._held
        while starts and starts[0] <= self.next_offset:
            offset = starts.pop(0)
            payload = held.pop(offset)
            self.buffered -= len(payload)
            end = offset + len(payload)
            if end <= self.next_offset:
                self._dup(len(payload))
                continue
            self._emit(memoryview(payload)[self.next_offset - offset :] if offset < self.next_offset else payload)

    def pop_ready(self) -> list[Chunk]:
        """In-order data not handed out yet (the caller writes it, then calls consume())."""
        ready, self._ready = self._ready, []
        return ready

    def consume(self, nbytes: int) -> None:
        """The application has written nbytes more of the handed-out data: the window slides."""
        if self.consumed + nbytes > self.next_offset - sum(len(c) for c in self._ready):
            raise ValueError("consumed more than was handed out")
        self.consumed += nbytes

    @property
    def unconsumed(self) -> int:
        """Bytes delivered in order but not yet written by the application."""
        return self.next_offset - self.consumed

"""Receiver reorder buffer: byte ranges arrive in any order over any path, leave in stream order.

Like aioquic's stream receive buffer, keyed by byte offset: duplicates (resends after a path died, or
opportunistic reinjection) are dropped or trimmed, in-order data takes a fast path that stores nothing, and what
is held is capped in bytes *and* in count, so a peer (or a stalled path) cannot make us grow without bound. A
range costs its bookkeeping as well as its payload: 120,000 one-byte ranges would hold 120 KB of payload in tens
of MiB of objects, so the count of held ranges is bounded (MAX_HELD_RANGES, a wire-format rule that honest
senders keep by construction) and small payloads are copied out of the frame that carried them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sortedcontainers import SortedDict

from ..errors import RemoteProtocolError
from .frames import MAX_HELD_RANGES

Chunk = bytes | bytearray | memoryview

#: Bytes of bookkeeping a held range costs beyond its payload (sorted-dict slot, key int, the payload's object);
#: charged in `held_cost` and the peak statistic, so they show what the buffer really holds.
RANGE_COST = 200
#: Payloads below this are copied when held, so a tiny range does not keep its whole receive buffer alive.
_COPY_BELOW = 4096
_MERGE_UPTO = 256 * 1024  # in-order small pieces are joined into buffers of up to this size


def _pins_more(payload: Chunk) -> bool:
    """A view that keeps a buffer more than twice its own size alive (a mostly duplicate frame's new tail)."""
    return isinstance(payload, memoryview) and isinstance(payload.obj, bytes | bytearray) and \
        2 * len(payload) < len(payload.obj)


@dataclass
class ReorderStats:
    duplicates: int = 0  # ranges dropped entirely because already held or delivered
    duplicate_bytes: int = 0
    peak_buffered: int = 0  # held + handed-out-not-written bytes, at most
    peak_ranges: int = 0
    peak_cost: int = 0  # held bytes + RANGE_COST per held range, at most


class ReorderBuffer:
    """Accepts (offset, payload) ranges; `pop_ready()` returns the in-order prefix that became available.

    `window` bounds how far past the delivered point data may lie: offset + len <= base + window, where base is
    what the application has consumed (acknowledged). A peer that exceeds it violates the protocol. Because
    ranges never extend past base + window and held ranges are kept disjoint, buffered bytes <= window, and held
    ranges <= max_ranges; so memory <= window + max_ranges x RANGE_COST.
    """

    def __init__(self, window: int, max_ranges: int = MAX_HELD_RANGES) -> None:
        if window <= 0 or max_ranges <= 0:
            raise ValueError("window and max_ranges must be positive")
        self.window, self.max_ranges = window, max_ranges
        self.next_offset = 0  # everything below has been handed out by pop_ready()
        self.consumed = 0  # everything below has been written by the application (see consume())
        self.buffered = 0
        self._held: SortedDict = SortedDict()  # early ranges by offset, never overlapping
        self._ready: list[Chunk] = []
        self._ready_bytes = 0
        self.stats = ReorderStats()

    @property
    def held_ranges(self) -> int:
        return len(self._held)

    @property
    def held_cost(self) -> int:
        return self.buffered + RANGE_COST * len(self._held)

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
        st = self.stats
        st.peak_buffered = max(st.peak_buffered, self.buffered + self.unconsumed)
        st.peak_ranges = max(st.peak_ranges, len(self._held))
        st.peak_cost = max(st.peak_cost, self.held_cost)
        return False

    def _store(self, offset: int, payload: Chunk) -> Chunk | None:
        """Hold an early range, keeping held ranges disjoint (so held bytes <= window): the part already held by
        a neighbour is cut off, neighbours the new range covers entirely are replaced. None: nothing new."""
        held = self._held
        end = offset + len(payload)
        i = held.bisect_right(offset)
        if i:
            prev, prev_payload = held.peekitem(i - 1)
            prev_end = prev + len(prev_payload)
            if prev_end >= end:
                return None
            if prev == offset:  # a shorter range at the same offset: covered entirely, replaced (not a new range)
                self.buffered -= len(held.popitem(i - 1)[1])
            elif prev_end > offset:
                payload = memoryview(payload)[prev_end - offset :]
                offset = prev_end
        i = held.bisect_left(offset)
        while i < len(held):
            nxt, nxt_payload = held.peekitem(i)
            if nxt >= end:
                break
            nxt_end = nxt + len(nxt_payload)
            if nxt_end <= end:  # wholly covered by the new range
                self.buffered -= len(held.popitem(i)[1])
                continue
            payload = memoryview(payload)[: nxt - offset]
            end = nxt
            break
        if end <= offset:
            return None
        if len(held) >= self.max_ranges:
            raise RemoteProtocolError(f"more than {self.max_ranges} separate out-of-order DATA ranges held "
                                      "(a sender keeps at most that many chunks beyond the acknowledged point)")
        if len(payload) < _COPY_BELOW or _pins_more(payload):
            payload = bytes(payload)
        held[offset] = payload
        self.buffered += len(payload)
        return payload

    def _dup(self, size: int) -> None:
        self.stats.duplicates += 1
        self.stats.duplicate_bytes += size

    def _emit(self, payload: Chunk) -> None:
        size = len(payload)
        if size < _COPY_BELOW or _pins_more(payload):
            # Small pieces are joined into one buffer we own, and a few new bytes at the end of a large frame are
            # copied out of it: what waits for a slow application costs about its own size, however it was cut.
            last = self._ready[-1] if self._ready else None
            if isinstance(last, bytearray) and len(last) < _MERGE_UPTO:
                last += payload
            else:
                self._ready.append(bytearray(payload))
        else:
            self._ready.append(payload)
        self._ready_bytes += size
        self.next_offset += size

    def _drain(self) -> None:
        """Move held ranges that now touch next_offset to the ready list (each step O(log n))."""
        held = self._held
        while held:
            offset, payload = held.peekitem(0)
            if offset > self.next_offset:
                return
            held.popitem(0)
            self.buffered -= len(payload)
            end = offset + len(payload)
            if end <= self.next_offset:
                self._dup(len(payload))
                continue
            self._emit(memoryview(payload)[self.next_offset - offset :] if offset < self.next_offset else payload)

    def pop_ready(self) -> list[Chunk]:
        """In-order data not handed out yet (the caller writes it, then calls consume())."""
        ready, self._ready, self._ready_bytes = self._ready, [], 0
        return ready

    def consume(self, nbytes: int) -> None:
        """The application has written nbytes more of the handed-out data: the window slides."""
        if self.consumed + nbytes > self.next_offset - self._ready_bytes:
            raise ValueError("consumed more than was handed out")
        self.consumed += nbytes

    @property
    def unconsumed(self) -> int:
        """Bytes delivered in order but not yet written by the application."""
        return self.next_offset - self.consumed

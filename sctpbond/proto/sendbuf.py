"""Send buffer: the outgoing stream from the application's write to the peer's cumulative ACK.

Holds unsent bytes and sent-but-unacknowledged chunks (each remembers the path it last went out on), so that
when a path dies its chunks can be put back and sent again elsewhere (aioquic's "delivery callbacks" idea,
reduced to what a cumulative ACK needs). The whole buffer is capped: the application must wait for space.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import LocalProtocolError, RemoteProtocolError
from .frames import MAX_HELD_RANGES

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True, eq=False)
class SentChunk:
    offset: int
    data: memoryview = field(repr=False)
    path: int  # path it was last sent on
    sends: int = 1
    queued: bool = False  # waiting in the resend queue
    copy_path: int = -1  # --redundant: the path its second copy went on (-1: none)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def __lt__(self, other: SentChunk) -> bool:  # heap order: lowest offset is the most urgent
        return self.offset < other.offset


class SendBuffer:
    def __init__(self, cap: int) -> None:
        if cap <= 0:
            raise ValueError("send buffer cap must be positive")
        self.cap = cap
        self.written = 0  # stream length accepted from the application
        self.acked = 0  # cumulative ACK from the peer
        self.sent_offset = 0  # first byte never sent
        self.eof = False
        self._unsent: deque[memoryview] = deque()
        self._unacked: deque[SentChunk] = deque()  # in offset order
        self._resend: list[SentChunk] = []

    # -- application side ---------------------------------------------------------------------------------------
    def space(self) -> int:
        return self.cap - (self.written - self.acked)

    def write(self, data: Buffer) -> None:
        if self.eof:
            raise LocalProtocolError("write after close")
        if len(data) > self.space():
            raise LocalProtocolError(f"write of {len(data)} bytes exceeds free space {self.space()}")
        if data:
            self._unsent.append(memoryview(data).cast("B"))
            self.written += len(data)

    def close(self) -> None:
        self.eof = True

    # -- network side -------------------------------------------------------------------------------------------
    @property
    def unsent(self) -> int:
        return self.written - self.sent_offset

    @property
    def in_flight(self) -> int:
        return self.sent_offset - self.acked

    @property
    def all_acked(self) -> bool:
        return self.eof and self.acked >= self.written

    def take_new(self, maxlen: int, path: int) -> SentChunk | None:
        """Cut the next chunk of at most maxlen unsent bytes and record it as sent on `path`. Never more than
        MAX_HELD_RANGES chunks beyond the peer's acknowledgement: the receiver may hold no more separate ranges
        (wire-format.md), and chunks keep their boundaries when resent, so this count bounds what it holds."""
        if maxlen <= 0 or not self._unsent or len(self._unacked) >= MAX_HELD_RANGES:
            return None
        unsent = self._unsent
        head = unsent[0]
        if len(head) >= maxlen:
            data = head[:maxlen]
            if len(head) == maxlen:
                unsent.popleft()
            else:
                unsent[0] = head[maxlen:]
        elif len(unsent) == 1:
            data = unsent.popleft()
        else:
            # Small writes (a pipe gives 64 KiB at a time) are joined into one chunk: one copy is far cheaper
            # than the per-frame cost of many small frames.
            joined = bytearray()
            while unsent and len(joined) < maxlen:
                part = unsent.popleft()
                room = maxlen - len(joined)
                if len(part) > room:
                    unsent.appendleft(part[room:])
                    part = part[:room]
                joined += part
            data = memoryview(joined)
        chunk = SentChunk(self.sent_offset, data, path)
        self.sent_offset += len(data)
        self._unacked.append(chunk)
        return chunk

    def take_resend(self, path: int) -> SentChunk | None:
        """The lowest chunk waiting to be sent again, now recorded as sent on `path`."""
        while self._resend:
            chunk = heapq.heappop(self._resend)
            chunk.queued = False
            if chunk.end <= self.acked:
                continue
            chunk.path = path
            chunk.sends += 1
            return chunk
        return None

    @property
    def resend_pending(self) -> bool:
        return bool(self._resend)

    def requeue_path(self, path: int) -> int:
        """A path died: put back every unacked chunk last sent on it. Returns the bytes requeued."""
        total = 0
        for chunk in self._unacked:
            if chunk.path == path and not chunk.queued:
                chunk.queued = True
                heapq.heappush(self._resend, chunk)
                total += len(chunk.data)
        return total

    def iter_unacked(self) -> Iterator[SentChunk]:
        """Unacknowledged chunks, oldest (the one holding the peer's cumulative ACK back) first."""
        return iter(self._unacked)

    def on_ack(self, delivered: int) -> int:
        """Cumulative ACK: free every chunk wholly below `delivered`. Returns the bytes newly acknowledged."""
        if delivered > self.sent_offset:
            raise RemoteProtocolError(f"peer acknowledged {delivered} bytes but only {self.sent_offset} were sent")
        if delivered <= self.acked:
            return 0
        newly = delivered - self.acked
        self.acked = delivered
        unacked = self._unacked
        while unacked and unacked[0].end <= delivered:
            unacked.popleft()
        return newly

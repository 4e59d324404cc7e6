"""Which bytes a path sends next: resends, redundant copies, new data, reinjection; backup paths held back.

The session asks `next_data(path, now)` when a path's socket can take a frame. The order is:
1. chunks of a dead or stale path waiting to go out again (within this path's quota, like new data);
2. `--redundant`: copies of chunks another path took, queued for this one (skipped once acknowledged);
3. new data, cut to the scheduler's grant and the peer's window (with `--redundant`, a copy is queued for the
   live path of lowest RTT besides this one, so every chunk is on two paths and either may die unnoticed);
4. opportunistic reinjection of a chunk stuck on a much slower path, when nothing new is left to send.

Backup paths (RFC 8684 section 3.3.8's B flag, with the semantics MPTCP users expect of it) take nothing while a
regular path is alive and not stale: then they carry only heartbeats. When the last regular path turns stale or
dies they carry the stream, and as soon as one is back new data goes to it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from .frames import Data
from .paths import PathState
from .scheduler import Scheduler
from .sendbuf import SendBuffer, SentChunk

#: Copies queued for one path at most, in chunks: a path too slow (or silently dead) to send its copies soon loses
#: the oldest, which its partner carried anyway.
MAX_QUEUED_COPIES = 64


class Striper:
    def __init__(self, sendbuf: SendBuffer, scheduler: Scheduler, paths: Mapping[int, PathState], *,
                 peer_window: int, chunk: int, redundant: bool, wake: Callable[[int], None]) -> None:
        self.sendbuf, self.scheduler, self.paths = sendbuf, scheduler, paths
        self.peer_window, self.chunk, self.redundant = peer_window, chunk, redundant
        self._wake = wake  # a path's sender may have a frame now
        self._copies: dict[int, deque[SentChunk]] = {}
        self.resent_bytes = 0
        self.copied_bytes = 0  # redundant copies sent
        self.first_resend_at: float | None = None  # when the first byte went out again (failover latency)

    # -- who may carry data -----------------------------------------------------------------------------------
    @property
    def regular_up(self) -> bool:
        """A regular (not backup) path is alive and not stale: backups stay idle."""
        return any(p.in_service and not p.backup for p in self.paths.values())

    def may_carry(self, path: PathState) -> bool:
        return path.in_service and (not path.backup or not self.regular_up)

    def ready(self, path: PathState) -> bool:
        """The path could take data now (a wake for it would not be wasted)."""
        return self.may_carry(path) and self.scheduler.grant(path) > 0

    # -- path changes -------------------------------------------------------------------------------------------
    def path_lost(self, pid: int) -> int:
        """Path pid died or turned stale: what it alone carried goes back to be sent again; a chunk whose copy
        went out on a path still in service belongs to that path from now on. Returns the bytes requeued."""
        self._copies.pop(pid, None)
        if self.redundant:
            for chunk in self.sendbuf.iter_unacked():
                if chunk.path == pid and chunk.copy_path != pid:
                    partner = self.paths.get(chunk.copy_path)
                    if partner is not None and partner.in_service:
                        chunk.path, chunk.copy_path = partner.id, pid
        return self.sendbuf.requeue_path(pid)

    # -- the next frame -------------------------------------------------------------------------------------------
    def next_data(self, path: PathState, now: float) -> Data | None:
        if not self.may_carry(path):
            return None
        grant = self.scheduler.grant(path)
        if grant <= 0:
            return None
        sb = self.sendbuf
        if sb.resend_pending:
            chunk = sb.take_resend(path.id)
            if chunk is not None:
                return self._resend(path, chunk, now)
        copy = self._take_copy(path.id)
        if copy is not None:
            self.copied_bytes += len(copy.data)
            return self._account(path, copy)
        limit = min(grant, sb.acked + self.peer_window - sb.sent_offset)
        chunk = sb.take_new(limit, path.id)
        if chunk is not None:
            if self.redundant:
                self._queue_copy(path, chunk)
            return self._account(path, chunk)
        if path.in_flight == 0:
            self.scheduler.on_idle(path, now)
        return self._reinject(path, now)

    def _take_copy(self, pid: int) -> SentChunk | None:
        queue = self._copies.get(pid)
        while queue:
            chunk = queue.popleft()
            if chunk.end > self.sendbuf.acked:
                return chunk
        return None

    def _queue_copy(self, path: PathState, chunk: SentChunk) -> None:
        """Queue a copy of `chunk` for the live path of lowest RTT besides `path` (none: the chunk has one copy)."""
        partners = [p for p in self.paths.values() if p.id != path.id and self.may_carry(p)]
        if not partners:
            return
        partner = min(partners, key=lambda p: (p.net_rtt if p.net_rtt is not None else p.srtt or 0.0, p.id))
        queue = self._copies.setdefault(partner.id, deque())
        if len(queue) >= MAX_QUEUED_COPIES:
            dropped = queue.popleft()  # never sent: it has one copy again, and reinjection may pick it up
            dropped.copy_path, dropped.sends = -1, dropped.sends - 1
        queue.append(chunk)
        chunk.copy_path = partner.id
        chunk.sends += 1  # two copies out: reinjection leaves it alone
        self._wake(partner.id)

    def _reinject(self, path: PathState, now: float) -> Data | None:
        """Opportunistic reinjection (as MPTCP does): when we are blocked (tail of the stream, or the buffer is
        full) and this path is idle, send again the oldest chunk still waiting on a slower or dead path, once."""
        sb = self.sendbuf
        if not (sb.eof or sb.space() < self.chunk):
            return None
        for i, chunk in enumerate(sb.iter_unacked()):
            if i >= 32:
                break
            if chunk.sends > 1 or chunk.queued or chunk.path == path.id:
                continue
            owner = self.paths.get(chunk.path)
            if owner is not None and owner.in_service and 2 * owner.rate >= path.rate:
                continue  # its own path is not much slower: it will arrive about as soon
            chunk.path, chunk.sends = path.id, chunk.sends + 1
            return self._resend(path, chunk, now)
        return None

    def _resend(self, path: PathState, chunk: SentChunk, now: float) -> Data:
        path.resent_chunks += 1
        self.resent_bytes += len(chunk.data)
        if self.first_resend_at is None:
            self.first_resend_at = now
        return self._account(path, chunk)

    @staticmethod
    def _account(path: PathState, chunk: SentChunk) -> Data:
        path.sent += len(chunk.data)
        path.chunks_sent += 1
        return Data(chunk.offset, chunk.data)

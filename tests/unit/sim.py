"""Deterministic network simulator for two sans-IO Session objects: simulated time, no threads, no sockets.

Each path has two directions; each direction is a FIFO link with a serialisation rate (bytes/s), a one-way
delay, and a send buffer (`sndbuf`): a sender may hand the link another frame only while the link's backlog
is below sndbuf, like a socket send buffer. Frames cross as bytes: DATA as `data_prefix + payload` (what the
runtime sends with sendmsg), everything else via `frames.encode`; the receiving side decodes with
`frames.decode` (message links, SCTP-like) or a `FrameReader` fed random splits (stream links, TCP-like).

The simulator is a second driver of the session's contract, beside sctpbond.runtime.runner (not a copy of it): a
path's sender calls `next_frame(pid, now)` while its link accepts; when it gets None it waits for a `Wake.SEND`
from `take_wake()` addressed to it (`take_send_wakes()`), or, like the runner's `cond.wait(0.25)`, a fallback
timeout: a frame found by the fallback is counted as a lost wakeup). The application moves data every step;
`handle_timer(now)` runs when the session's `get_timer()` deadline has come (no sooner than `tick` after the last
run, as the runner's min_timer), and every event (`next_event()`) is taken and kept in `self.log`. The clock
jumps to the next thing that can happen (arrival, a timer, link writable, scheduled event), so a run costs per
frame, not per millisecond.

Faults: `kill(pid)` (both sides notice at once, e.g. a reset: fail_path on both, frames in flight lost),
`blackhole(pid)` (every frame on the path vanishes from then on; only silence detection can notice), and
random duplicates with probability `dup` per frame: a control frame is delivered a second time up to
`dup_delay` later; a DATA frame gets a second copy sent on a random live path (see `_send_copy`).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sctpbond.proto.events import PathFailed
from sctpbond.proto.frames import (
    Data,
    FrameReader,
    FrameType,
    data_prefix,
    decode,
    encode,
)
from sctpbond.proto.session import Session, SessionConfig, Wake

AB, BA = "ab", "ba"  # directions; session "a" sends on AB links and receives on BA links


@dataclass(frozen=True)
class PathSpec:
    rate: float = 5e6  # bytes/s, each direction
    delay: float = 0.005  # one-way propagation delay, s
    sndbuf: int = 8 * 1024  # link backlog (bytes) above which the sender blocks
    stream: bool = True  # True: TCP-like byte stream (FrameReader); False: one frame per message (decode)


class Link:
    """One direction of one path."""

    def __init__(self, spec: PathSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.busy_until = -math.inf
        self.queue: deque[tuple[float, bytes]] = deque()  # (arrival time, frame bytes)
        self.up = True
        self.blackhole = False
        self.reader = FrameReader() if spec.stream else None
        self.wire_bytes = 0

    def accepts(self, now: float) -> bool:
        return self.up and self.busy_until - now <= self.spec.sndbuf / self.spec.rate

    def writable_at(self) -> float:
        return self.busy_until - self.spec.sndbuf / self.spec.rate

    def push(self, now: float, wire: bytes) -> None:
        self.busy_until = max(now, self.busy_until) + len(wire) / self.spec.rate
        self.wire_bytes += len(wire)
        if not self.blackhole:
            self.queue.append((self.busy_until + self.spec.delay, wire))

    def next_arrival(self) -> float:
        return self.queue[0][0] if self.queue else math.inf

    def decode(self, wire: bytes) -> list:
        if self.reader is None:
            return [decode(wire)]
        out = []
        view = memoryview(wire)
        while view:  # the stream hands the bytes over in arbitrary pieces
            n = self.rng.randint(1, len(view)) if self.rng.random() < 0.5 else len(view)
            out += self.reader.feed(view[:n])
            view = view[n:]
        return out

    def drop(self) -> None:
        self.queue.clear()
        if self.reader is not None:
            self.reader = FrameReader()


class App:
    """The application on one side: writes `data` in random pieces, then closes; reads and consumes."""

    def __init__(self, session: Session, data: bytes, rng: random.Random, max_piece: int, slow_reader: bool,
                 write_block: int | None = None) -> None:
        self.session = session
        self.write_block = write_block
        self.data = memoryview(data)
        self.rng = rng
        self.max_piece = max_piece
        self.slow_reader = slow_reader
        self.pos = 0
        self.closed = False
        self.out = bytearray()
        self.held = 0  # read but not yet consumed (being "written out")

    def pump(self, now: float) -> None:
        s = self.session
        while self.pos < len(self.data):
            if self.write_block:  # like the runner's input pump: a whole block, once it fits
                n = min(self.write_block, len(self.data) - self.pos)
                if s.send_space() < n:
                    break
            else:
                n = min(s.send_space(), len(self.data) - self.pos, self.rng.randint(1, self.max_piece))
            if n <= 0:
                break
            s.write(self.data[self.pos : self.pos + n])
            self.pos += n
            if self.rng.random() < 0.25:  # the source is not always ready with more
                break
        if self.pos >= len(self.data) and not self.closed:
            s.close_send(now)
            self.closed = True
        for chunk in s.read():
            self.out += chunk
            self.held += len(chunk)
        if self.held:
            n = self.rng.randint(1, self.held) if self.slow_reader and self.rng.random() < 0.5 else self.held
            s.consumed(n, now)
            self.held -= n


@dataclass
class SendRecord:
    t: float
    direction: str
    pid: int
    offset: int
    size: int


@dataclass
class Sim:
    config: SessionConfig
    paths: list[PathSpec]
    data_ab: bytes = b""
    data_ba: bytes = b""
    seed: int = 0
    dup: float = 0.0  # probability that a delivered frame is delivered a second time
    dup_delay: float = 0.01
    tick: float = 0.005
    start: float = 0.0
    max_piece: int = 8 * 1024
    slow_reader: bool = False
    write_block: int | None = None  # write whole blocks of this size once they fit (the runner's input pump)
    wake_fallback: float = 0.25  # the runner's cond.wait(0.25)
    config_b: SessionConfig | None = None
    backup: frozenset[int] = frozenset()  # path ids the dialler made backups (--backup), on both sides
    on_receive: Callable[[Sim, str, int, object], None] | None = None  # observer after each delivered frame
    on_send: Callable[[Sim, str, int, object], None] | None = None  # observer after a frame is put on a link
    now: float = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = self.start
        cfg_a, cfg_b = self.config, self.config_b or self.config
        self.a = Session(cfg_a, peer_window=cfg_b.window, peer_max_chunk=cfg_b.max_chunk, now=self.now)
        self.b = Session(cfg_b, peer_window=cfg_a.window, peer_max_chunk=cfg_a.max_chunk, now=self.now)
        self.sender_of = {AB: self.a, BA: self.b}
        self.receiver_of = {AB: self.b, BA: self.a}
        self.pids = list(range(len(self.paths)))
        for pid in self.pids:
            self.a.add_path(pid, self.now, backup=pid in self.backup)
            self.b.add_path(pid, self.now, backup=pid in self.backup)
        self.links = {(d, pid): Link(spec, self.rng) for pid, spec in enumerate(self.paths) for d in (AB, BA)}
        # apps[AB] is a's application (it writes data_ab); apps[BA] is b's
        self.apps = {
            AB: App(self.a, self.data_ab, self.rng, self.max_piece, self.slow_reader, self.write_block),
            BA: App(self.b, self.data_ba, self.rng, self.max_piece, self.slow_reader, self.write_block),
        }
        self.waiting: dict[tuple[str, int], float | None] = {k: None for k in self.links}  # sender idle since
        self.events: list[tuple[float, int, Callable[[float], None]]] = []
        self.dups: list[tuple[float, int, str, int, bytes]] = []
        self._seq = 0
        self.timer_at = {"a": self.now, "b": self.now}  # when each session's handle_timer runs next
        self.log: list[tuple[float, str, object]] = []  # every event the sessions gave: (time, side, event)
        self.sends: list[SendRecord] = []
        self.lost_wakeups = 0
        self.timer_failures: list[tuple[float, str, int]] = []  # (time, side, pid) failed by handle_timer
        self.killed: dict[int, float] = {}
        self.blackholed: dict[int, float] = {}
        self.frames_delivered = 0
        self.last_arrival: dict[tuple[str, int], float] = {}  # (direction, pid) -> when a frame last arrived
        self.duplicates_delivered = 0  # network copies of control frames
        self.duplicates_sent = 0  # extra DATA copies
        self.steps = 0

    # -- scenario control ------------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, fn))

    def kill(self, pid: int, now: float) -> None:
        """Both ends learn at once that the path is gone (reset/EOF); whatever was in flight on it is lost."""
        self.killed[pid] = now
        for d in (AB, BA):
            link = self.links[d, pid]
            link.up = False
            link.drop()
        self.dups = [x for x in self.dups if x[3] != pid]
        heapq.heapify(self.dups)
        self.a.fail_path(pid, "killed by the simulator", now)
        self.b.fail_path(pid, "killed by the simulator", now)

    def revive(self, pid: int, now: float, client: str = "a") -> None:
        """The path re-joins with a new connection under the same path id. As in the handshake, the server
        side calls add_path when it accepts AUTH (and sends READY), the client one one-way delay later when
        READY arrives; frames the server sends after READY arrive after it, so nobody sees DATA early."""
        for d in (AB, BA):
            link = self.links[d, pid]
            link.up, link.blackhole = True, False
            link.drop()
            link.busy_until = now
        self.killed.pop(pid, None)
        self.blackholed.pop(pid, None)
        server, client_s = (self.b, self.a) if client == "a" else (self.a, self.b)
        backup = pid in self.backup
        server.add_path(pid, now, backup=backup)
        self.at(now + self.paths[pid].delay, lambda t: client_s.add_path(pid, t, backup=backup))

    def blackhole(self, pid: int, now: float) -> None:
        """From now on every frame on this path vanishes, in both directions; nobody is told."""
        self.blackholed[pid] = now
        for d in (AB, BA):
            link = self.links[d, pid]
            link.blackhole = True
            link.drop()
        self.dups = [x for x in self.dups if x[3] != pid]
        heapq.heapify(self.dups)

    # -- the loop ---------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return (
            self.a.complete
            and self.b.complete
            and len(self.output(AB)) == len(self.data_ab)
            and len(self.output(BA)) == len(self.data_ba)
        )

    def output(self, direction: str) -> bytearray:
        """What the application at the far end of `direction` has received (AB: b's app; BA: a's app)."""
        return self.apps[BA if direction == AB else AB].out

    def run(self, limit: float = 30.0) -> Sim:
        deadline = self.start + limit
        while not self.done:
            if self.now > deadline:
                raise AssertionError(f"transfer did not complete within {limit} simulated s\n{self.describe()}")
            for s in (self.a, self.b):
                if s.failure is not None:
                    raise AssertionError(f"session failed: {s.failure!r}\n{self.describe()}")
            self.step()
        return self

    def run_for(self, duration: float) -> Sim:
        """Keep the clock running (e.g. after completion, to watch timers)."""
        end = self.now + duration
        while self.now < end:
            self.step()
        return self

    def step(self) -> None:
        self.steps += 1
        now = self.now
        while self.events and self.events[0][0] <= now:
            _, _, fn = heapq.heappop(self.events)
            fn(now)
        self._deliver(now)
        for app in self.apps.values():
            app.pump(now)
        for name, s in (("a", self.a), ("b", self.b)):
            if now >= self.timer_at[name]:
                s.handle_timer(now)
                for event in self._events(name, s, now):
                    if isinstance(event, PathFailed) and event.reason.startswith("no answer"):
                        self.timer_failures.append((now, name, event.path_id))
                deadline = s.get_timer()
                self.timer_at[name] = math.inf if deadline is None else max(deadline, now + self.tick)
        self._take_wakes()
        order = list(self.links)
        self.rng.shuffle(order)
        for d, pid in order:
            self._pull(d, pid, now)
        self._take_wakes()
        self.now = self._next_time(now)

    def _events(self, name: str, s: Session, now: float) -> list:
        taken = []
        while (event := s.next_event()) is not None:
            taken.append(event)
            self.log.append((now, name, event))
        return taken

    def _take_wakes(self) -> None:
        for name, (d, s) in zip(("a", "b"), self.sender_of.items(), strict=True):
            self._events(name, s, self.now)
            wake = s.take_wake()
            if wake & Wake.TIMER:  # an earlier deadline: armed as the runner's timer thread re-arms it
                deadline = s.get_timer()
                if deadline is not None:
                    self.timer_at[name] = min(self.timer_at[name], max(deadline, self.now))
            if wake & Wake.SEND:
                woken = s.take_send_wakes()  # only these senders wake, as in the runner
                for pid in self.pids:
                    if woken is None or pid in woken:
                        self.waiting[d, pid] = None

    def _deliver(self, now: float) -> None:
        due: list[tuple[float, int, str, int, bytes, bool]] = []
        for (d, pid), link in self.links.items():
            while link.queue and link.queue[0][0] <= now:
                t, wire = link.queue.popleft()
                self._seq += 1
                due.append((t, self._seq, d, pid, wire, False))
        while self.dups and self.dups[0][0] <= now:
            t, seq, d, pid, wire = heapq.heappop(self.dups)
            due.append((t, seq, d, pid, wire, True))
        due.sort()
        for _t, _, d, pid, wire, is_dup in due:
            link = self.links[d, pid]
            if not link.up or link.blackhole:
                continue
            frames = [decode(wire)] if is_dup else link.decode(wire)
            receiver = self.receiver_of[d]
            self.last_arrival[d, pid] = now
            for frame in frames:
                receiver.receive(pid, frame, now)
                self.frames_delivered += 1
                self.duplicates_delivered += is_dup
                if self.on_receive is not None:
                    self.on_receive(self, d, pid, frame)
            if not is_dup and self.dup and wire[0] != FrameType.DATA and self.rng.random() < self.dup:
                self._seq += 1
                heapq.heappush(self.dups, (now + self.rng.uniform(0, self.dup_delay), self._seq, d, pid, wire))

    def _pull(self, d: str, pid: int, now: float) -> None:
        s, link = self.sender_of[d], self.links[d, pid]
        if not s.paths[pid].alive or not link.up:
            return
        idle_since = self.waiting[d, pid]
        fallback = idle_since is not None
        if fallback and now - idle_since < self.wake_fallback:
            return
        while link.accepts(now):
            frame = s.next_frame(pid, now)
            if frame is None:
                if idle_since is None or fallback:
                    self.waiting[d, pid] = now
                return
            if fallback:
                self.lost_wakeups += 1
                fallback = False
            self.waiting[d, pid] = None
            if isinstance(frame, Data):
                size = len(frame.payload)
                wire = data_prefix(frame.offset, size) + bytes(frame.payload)
                self.sends.append(SendRecord(now, d, pid, frame.offset, size))
                if self.dup and self.rng.random() < self.dup:
                    self._send_copy(d, now, wire, frame.offset, size)
            else:
                wire = encode(frame)
            link.push(now, wire)
            if self.on_send is not None:
                self.on_send(self, d, pid, frame)
                if not link.up or not s.paths[pid].alive:
                    return

    def _send_copy(self, d: str, now: float, wire: bytes, offset: int, size: int) -> None:
        """Duplicate a DATA frame the way duplicates really arise: the sender puts a second copy on some path.

        TCP and SCTP never duplicate, so a copy made by the *network* would make the peer's per-path byte
        counter exceed the sender's (the session ignores such counters, meant for stale ones after a re-join).
        The copy is therefore accounted on the sender's path like a reinjection, and takes that path's FIFO."""
        s = self.sender_of[d]
        alive = [pid for pid in self.pids if s.paths[pid].alive and self.links[d, pid].up]
        if not alive:
            return
        pid = self.rng.choice(alive)
        s.paths[pid].sent += size
        self.sends.append(SendRecord(now, d, pid, offset, size))
        self.links[d, pid].push(now, wire)
        self.duplicates_sent += 1

    def _next_time(self, now: float) -> float:
        if any(t <= now for t in self.timer_at.values()):
            return now  # a timer came due during this step (Wake.TIMER): run it at once, as the runner would
        cands = [t for t in self.timer_at.values() if t != math.inf]
        if self.events:
            cands.append(self.events[0][0])
        if self.dups:
            cands.append(self.dups[0][0])
        for (d, pid), link in self.links.items():
            cands.append(link.next_arrival())
            if link.up and not link.accepts(now):
                cands.append(link.writable_at())
            idle_since = self.waiting[d, pid]
            if idle_since is not None:
                cands.append(idle_since + self.wake_fallback)
        later = [t for t in cands if t > now]
        return min(later) if later else now + self.tick

    # -- results ----------------------------------------------------------------------------------------------
    def data_bytes(self, direction: str, pid: int, after: float = -math.inf) -> int:
        return sum(r.size for r in self.sends if r.direction == direction and r.pid == pid and r.t >= after)

    def describe(self) -> str:
        lines = [
            (f"now={self.now:.4f} steps={self.steps} lost_wakeups={self.lost_wakeups} "
             f"killed={self.killed} blackholed={self.blackholed} timer_failures={self.timer_failures}")
        ]
        for name, s, app in (("a", self.a, self.apps[AB]), ("b", self.b, self.apps[BA])):
            sb = s.sendbuf
            lines.append(
                f" {name}: wrote {app.pos}/{len(app.data)} closed={app.closed} written={sb.written} "
                f"sent={sb.sent_offset} acked={sb.acked} fin_acked={s.fin_acked} resend={sb.resend_pending} "
                f"| consumed={s.reorder.consumed} next={s.reorder.next_offset} buffered={s.reorder.buffered} "
                f"peer_fin={s.peer_fin} | complete={s.complete} failure={s.failure!r}"
            )
            for p in s.paths.values():
                lines.append(
                    f"   path {p.id}: alive={p.alive} sent={p.sent} peer_rx={p.peer_received} rx={p.received} "
                    f"rate={p.rate:.0f} quota={s.scheduler.quota(p)} grant={s.scheduler.grant(p)} "
                    f"down={p.down_reason!r}"
                )
        return "\n".join(lines)

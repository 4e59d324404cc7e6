"""The sans-IO session: one duplex byte stream over many paths.

Ties the send buffer, the scheduler, the paths' heartbeats and the reorder buffer together. The contract with
the runtime (as aioquic's QuicConnection and h11's Connection have it):

- inputs: frames received on a path (`receive`), a peer's violation the transport found (`peer_violated`), a
  path the transport lost (`fail_path`), application bytes in (`write`, `close_send`) and out (`read`,
  `consumed`), and `handle_timer(now)` once `get_timer()`'s deadline has passed; time is always an argument;
- outputs: the next frame for a path (`next_frame`), the next deadline (`get_timer`), past-tense events
  (`next_event`: PathJoined, PathStale, PathFailed, AllPathsDown, StreamEnded, SessionTerminated), and for the
  hot path `take_wake()` flags saying which of the runtime's waiting threads to wake.

Nothing here blocks, touches a socket or reads a clock; every protocol decision (a path is dead, the session is
aborted and with which code, all paths stayed down too long) is taken here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from dataclasses import dataclass, field

import xxhash

from ..errors import IntegrityError, RemoteProtocolError, SctpbondError, SessionAborted, TransferFailed
from .events import AllPathsDown, Event, PathFailed, PathJoined, PathStale, SessionTerminated, StreamEnded
from .frames import DATA_OVERHEAD, MAX_PATH_COUNTERS, Abort, AbortCode, Ack, Data, Fin, Frame, Ping, Pong
from .paths import Heartbeat, PathState, Silence
from .reorder import Chunk, ReorderBuffer
from .scheduler import Scheduler, SchedulerConfig
from .sendbuf import Buffer, SendBuffer
from .stats import SessionStats, progress_line, snapshot
from .striping import Striper

MiB = 1 << 20


class Wake(enum.IntFlag):
    NONE = 0
    READ = 1  # in-order data for the application
    WRITE = 2  # send buffer space for the application
    SEND = 4  # some path may have a frame to send
    STATE = 8  # completion, failure or path change
    TIMER = 16  # get_timer() may be earlier than the deadline the runtime armed


@dataclass(frozen=True)
class SessionConfig:
    window: int = 64 * MiB  # reorder buffer cap we advertise (bytes held for the application)
    send_cap: int = 64 * MiB  # unacknowledged bytes we keep for resending
    max_chunk: int = 1 << 20
    # A path pings when it has sent nothing else for ping_interval (the peer's silence detection needs to hear
    # from it), and at least every rtt_probe_interval (fresh RTTs). Pinging busy paths every 0.2 s as well made
    # PING and PONG the most frequent frames of a bulk transfer, at a real cost on a slow CPU.
    ping_interval: float = 0.2
    rtt_probe_interval: float = 1.0
    dead_after: float = 1.0  # silence on a path for this long means it is dead (blackhole detection)
    # Silence this long while data is outstanding makes a path stale: its unacknowledged chunks are sent again on
    # the others at once (duplicates are dropped by the receiver), long before it is declared dead. A false
    # alarm (a long queue, a busy CPU) costs only the duplicate bytes.
    stale_after: float = 0.4
    path_timeout: float = 30.0  # every path down this long: the session is aborted (TIMEOUT)
    peer_gone_grace: float = 2.0  # every path closed or reset by the peer (not silent): its process is gone
    ack_bytes: int = 256 * 1024
    ack_delay: float = 0.02
    fin_retry: float = 1.0
    max_paths: int = MAX_PATH_COUNTERS
    redundant: bool = False  # every chunk on two paths (proto/striping.py); the dialler's HELLO sets it for both
    # A frame that fails authentication fails its path (re-dialled), not the session: a flipped bit on one link
    # must not end a transfer that would survive that link's loss. More than this many on one path within
    # auth_failure_period means someone is at work on the link: the session is aborted.
    auth_failures: int = 3
    auth_failure_period: float = 60.0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


class Session:
    def __init__(self, config: SessionConfig, *, peer_window: int, peer_max_chunk: int, now: float) -> None:
        self.config = config
        self.peer_window = peer_window
        self.chunk = max(1, min(config.max_chunk, peer_max_chunk))
        sched_cfg = config.scheduler
        if sched_cfg.max_chunk != self.chunk:
            sched_cfg = dataclasses.replace(sched_cfg, max_chunk=self.chunk)
        self.scheduler = Scheduler(sched_cfg)
        self._hb = Heartbeat(config.ping_interval, config.rtt_probe_interval, config.stale_after, config.dead_after)
        self.sendbuf = SendBuffer(min(config.send_cap, peer_window))
        self.reorder = ReorderBuffer(config.window)
        self.paths: dict[int, PathState] = {}
        self.striper = Striper(self.sendbuf, self.scheduler, self.paths, peer_window=peer_window, chunk=self.chunk,
                               redundant=config.redundant, wake=self._wake_send)
        self.started = now
        self.failure: SctpbondError | None = None
        self.peer_fin: int | None = None
        self.fin_acked = False
        self._fin_sent_at: float | None = None
        self._ctrl: dict[int, deque[Frame]] = {}
        self._ack_due: set[int] = set()
        self._unacked_rx = 0  # payload bytes received or consumed since the last ACK we sent
        self._unacked_since: float | None = None
        self._last_rx_path: int | None = None
        self._auth_failures: dict[int, deque[float]] = {}
        self._events: deque[Event] = deque()
        self._terminated = False
        self._all_down_since: float | None = None
        self._peer_closed: set[int] = set()  # paths the peer closed or reset (vs. went silent)
        self._armed: float | None = None  # the deadline get_timer() last gave
        self._wake = Wake.NONE
        self._send_wake: set[int] | None = set()  # the paths a Wake.SEND is for; None: every path
        # End-to-end digests (XXH3-128, ~18 GB/s) of each direction's stream, as written by the sender's
        # application and as handed to ours: the FIN carries the sender's, and the final ACK (FIN flag) is only
        # sent once ours matches, so neither side reports success over a corrupted stream.
        self.tx_digest = xxhash.xxh3_128()
        self.rx_digest = xxhash.xxh3_128()
        self.peer_digest: bytes | None = None
        self.digest_ok: bool | None = None

    # -- events and timers ---------------------------------------------------------------------------------------
    def next_event(self) -> Event | None:
        """The oldest event not taken yet, or None."""
        return self._events.popleft() if self._events else None

    @property
    def resent_bytes(self) -> int:
        return self.striper.resent_bytes

    @property
    def first_resend_at(self) -> float | None:
        return self.striper.first_resend_at

    @property
    def copied_bytes(self) -> int:
        return self.striper.copied_bytes

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def get_timer(self) -> float | None:
        """When handle_timer() must run next (None: nothing is timed). The runtime arms exactly this; a call that
        makes it earlier sets Wake.TIMER."""
        if self.failure is not None:  # over: nothing is timed any more (the runtime is shutting down)
            self._armed = None
            return None
        hb, cfg = self._hb, self.config
        deadlines = [p.deadline(hb) for p in self.paths.values() if p.alive]
        if self._unacked_since is not None:
            deadlines.append(self._unacked_since + cfg.ack_delay)
        if self.sendbuf.eof and not self.fin_acked and self._fin_sent_at is not None:
            deadlines.append(self._fin_sent_at + cfg.fin_retry)
        if self._all_down_since is not None:
            grace = cfg.peer_gone_grace if self._peer_gone else cfg.path_timeout
            deadlines.append(self._all_down_since + grace)
        self._armed = min(deadlines) if deadlines else None
        return self._armed

    def _timer_at(self, when: float) -> None:
        if self._armed is None or when < self._armed:
            self._wake |= Wake.TIMER

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        self._wake |= Wake.STATE

    def _check_terminated(self) -> None:
        if not self._terminated and (self.failure is not None or self.complete):
            self._terminated = True
            self._emit(SessionTerminated(self.failure))

    # -- digests: one owner, hashed off the lock -----------------------------------------------------------------
    def hash_sent(self, data: Buffer) -> None:
        """Fold bytes the application wrote into the stream's digest. Call it in stream order, from the one thread
        that feeds write(); it touches nothing else, so the runtime may call it without its lock."""
        self.tx_digest.update(data)

    def hash_received(self, chunk: Chunk) -> None:
        """Fold bytes read() gave into the received digest, in order, before consumed() for them; from the one
        thread that writes them out, without the runtime's lock (as hash_sent)."""
        self.rx_digest.update(chunk)

    # -- bookkeeping helpers -----------------------------------------------------------------------------------
    def take_wake(self) -> Wake:
        wake, self._wake = self._wake, Wake.NONE
        return wake

    def take_send_wakes(self) -> set[int] | None:
        """Which paths' senders the last Wake.SEND is for (None: all of them). Waking only those matters on a slow
        CPU: every needless wake-up is a thread switch and a lock round trip, and waking every sender for each
        ACK cost the SCTP VM about a quarter of its CPU."""
        pids, self._send_wake = self._send_wake, set()
        return pids

    def _wake_send(self, pid: int | None = None) -> None:
        self._wake |= Wake.SEND
        if pid is None:
            self._send_wake = None
        elif self._send_wake is not None:
            self._send_wake.add(pid)

    def _wake_ready(self) -> None:
        """New data or window: wake the paths that could take some now (the others wait for their own ACKs)."""
        for path in self.alive_paths:
            if self.striper.ready(path):
                self._wake_send(path.id)

    @property
    def alive_paths(self) -> list[PathState]:
        return [p for p in self.paths.values() if p.alive]

    @property
    def send_done(self) -> bool:
        return self.sendbuf.all_acked and self.fin_acked

    @property
    def recv_done(self) -> bool:
        return self.peer_fin is not None and self.reorder.consumed >= self.peer_fin

    @property
    def complete(self) -> bool:
        return self.failure is None and self.send_done and self.recv_done

    def _queue(self, pid: int, frame: Frame) -> None:
        """Queue a control frame. At most one of each type waits per path (a PING flood from a peer that reads
        nothing costs one PONG, answering the newest PING), so the queue never holds more than four frames."""
        ctrl = self._ctrl[pid]
        for i, queued in enumerate(ctrl):
            if type(queued) is type(frame):
                del ctrl[i]
                break
        ctrl.append(frame)
        self._wake_send(pid)

    # -- paths ----------------------------------------------------------------------------------------------------
    def transport_rtt(self, pid: int, seconds: float | None) -> None:
        """The transport of path pid reports its own round-trip time (None: it has none)."""
        path = self.paths.get(pid)
        if path is not None and path.alive and seconds is not None and seconds >= 0:
            path.net_rtt = seconds

    def add_path(self, pid: int, now: float, label: str = "", max_frame: int | None = None,
                 backup: bool = False) -> PathState:
        """A connection finished its handshake for this session (first time, or re-joining after a failure);
        `max_frame`: the largest frame its transport takes (Channel.max_frame); `backup`: the dialler's HELLO
        made it a backup path (data only while no regular path can carry it)."""
        path = self.paths.get(pid)
        rejoined = path is not None
        if path is None:
            if len(self.paths) >= self.config.max_paths:
                raise RemoteProtocolError(f"more than {self.config.max_paths} paths in one session")
            path = self.paths[pid] = PathState(pid, label)
        path.label, path.backup = label or path.label, backup
        path.max_chunk = max(1, max_frame - DATA_OVERHEAD) if max_frame else None
        path.start(now, rejoined)
        self._peer_closed.discard(pid)
        self._all_down_since = None
        self._ctrl[pid] = deque()
        if self.sendbuf.eof and not self.fin_acked:
            self._queue(pid, self._fin())
        self._wake_send()
        self._wake |= Wake.TIMER
        self._emit(PathJoined(pid, path.label, rejoined))
        return path

    def fail_path(self, pid: int, reason: str, now: float, *, peer_closed: bool = False) -> int:
        """A path is gone (closed or reset by the peer, silent, or untrustworthy): the one place a path fails.
        Its unacknowledged chunks go back to be sent elsewhere; PathFailed tells the runtime to close it (and a
        dialler to re-dial it); with no path left the all-paths-down clock starts."""
        path = self.paths.get(pid)
        if path is None or not path.alive:
            return 0
        path.stop(reason, now)
        if peer_closed:
            self._peer_closed.add(pid)
        self._ctrl[pid].clear()
        self._ack_due.discard(pid)
        requeued = self.striper.path_lost(pid)
        if self.sendbuf.eof and not self.fin_acked:
            for other in self.alive_paths:  # the FIN may have been lost with this path
                self._queue(other.id, self._fin())
        if self.reorder.next_offset or self.peer_fin is not None:
            # Our last ACK may have been lost with this path, and if it acknowledged everything the peer sent,
            # nothing would ever make us send another one: a peer waiting for window space stalls for good.
            self._request_ack()
        self._wake_send()
        self._emit(PathFailed(pid, reason, requeued, peer_closed))
        if not self.alive_paths and self.failure is None and not self.complete:
            self._all_down_since = now
            self._wake |= Wake.TIMER
            self._emit(AllPathsDown(self.config.path_timeout))
        return requeued

    @property
    def _peer_gone(self) -> bool:
        return bool(self.paths) and self._peer_closed >= set(self.paths)

    def peer_violated(self, pid: int, error: RemoteProtocolError, now: float) -> None:
        """The transport found the peer breaking the protocol on path pid (a frame of the wrong type or length,
        or one that failed authentication). A failed authentication costs the path (auth_failed); anything
        else from an authenticated peer aborts the session with the code the error carries."""
        if isinstance(error, IntegrityError):
            self.auth_failed(pid, str(error), now)
            return
        self.abort(AbortCode(error.abort_code), str(error), RemoteProtocolError(f"path {pid}: {error}"))

    def auth_failed(self, pid: int, reason: str, now: float) -> bool:
        """A frame on path pid failed authentication (altered, injected or replayed): the path goes, as a dead one
        does, unless the path has used up its budget, in which case the session is aborted. True: aborted."""
        times = self._auth_failures.setdefault(pid, deque())
        times.append(now)
        while times and now - times[0] > self.config.auth_failure_period:
            times.popleft()
        if len(times) > self.config.auth_failures:
            error = IntegrityError(f"path {pid}: {reason}, {len(times)} times within "
                                   f"{self.config.auth_failure_period:g} s: someone is altering the traffic")
            self.abort(AbortCode.INTEGRITY, "frames failed authentication again and again", error)
            return True
        self.fail_path(pid, reason, now)
        return False

    # -- application side --------------------------------------------------------------------------------------
    def send_space(self) -> int:
        return self.sendbuf.space()

    def write(self, data: Buffer, *, digest: bool = True) -> None:
        """Queue data to send. digest=False: the caller already gave it to hash_sent() (the runtime hashes
        outside its lock)."""
        self.sendbuf.write(data)
        if digest:
            self.hash_sent(data)
        self._wake_ready()

    def _fin(self) -> Fin:
        return Fin(self.sendbuf.written, self.tx_digest.digest())

    def close_send(self, now: float) -> None:
        """Local end of stream: send FIN (on every path, so one dying path cannot lose it)."""
        if self.sendbuf.eof:
            return
        self.sendbuf.close()
        self._fin_sent_at = now
        for path in self.alive_paths:
            self._queue(path.id, self._fin())
        self._wake |= Wake.STATE | Wake.TIMER
        self._check_terminated()

    def read(self, *, digest: bool = True) -> list[Chunk]:
        """In-order received data the application has not taken yet. digest=False: the caller gives the chunks to
        hash_received() itself, in order, before it calls consumed() for them."""
        chunks = self.reorder.pop_ready()
        if digest:
            for chunk in chunks:
                self.hash_received(chunk)
        return chunks

    def consumed(self, nbytes: int, now: float) -> None:
        """The application wrote out nbytes of what read() gave: slide the window and acknowledge."""
        self.reorder.consume(nbytes)
        self._note_unacked(nbytes, now)
        if self.recv_done:
            self._finish_receiving()
        elif self._unacked_rx >= self.config.ack_bytes or self.reorder.unconsumed == 0:
            self._request_ack()
        self._check_terminated()

    def _finish_receiving(self) -> None:
        """The peer's whole stream went to the application (FIN seen, everything consumed): check its digest once,
        and send the closing ACK on every path."""
        if self.digest_ok is None:
            self._verify_digest()
            if self.digest_ok:
                self._emit(StreamEnded(self.reorder.consumed))
        self._ack_due.update(p.id for p in self.alive_paths)
        self._wake_send()
        self._wake |= Wake.STATE

    def _verify_digest(self) -> None:
        """Compare what the peer says it sent with what we handed out."""
        self.digest_ok = self.rx_digest.digest() == self.peer_digest
        if not self.digest_ok:
            error = IntegrityError(f"end-to-end digest mismatch: the {self.reorder.consumed} bytes received differ "
                                   "from what the peer sent (corrupted on the way)")
            self.abort(AbortCode.INTEGRITY, "end-to-end digest mismatch", error)

    def _note_unacked(self, nbytes: int, now: float) -> None:
        self._unacked_rx += nbytes
        if self._unacked_since is None:
            self._unacked_since = now
            self._timer_at(now + self.config.ack_delay)

    def _request_ack(self, pid: int | None = None) -> None:
        if pid is None or not self.paths[pid].alive:
            pid = self._last_rx_path
        if pid is None or not self.paths[pid].alive:
            alive = self.alive_paths
            if not alive:
                return
            pid = alive[0].id
        self._ack_due.add(pid)
        self._wake_send(pid)

    # -- network side ------------------------------------------------------------------------------------------
    def receive(self, pid: int, frame: Frame, now: float) -> None:
        """Process one frame that arrived on path pid. A violation aborts the session (SessionTerminated), with
        the ABORT code its error carries; nothing is raised."""
        try:
            self._receive(self.paths[pid], frame, now)
        except RemoteProtocolError as exc:
            self.peer_violated(pid, exc, now)
        self._check_terminated()

    def _receive(self, path: PathState, frame: Frame, now: float) -> None:
        pid = path.id
        path.last_heard = now
        if path.heard():
            self._wake_send(pid)
        if isinstance(frame, Data):
            self._on_data(path, frame, now)
        elif isinstance(frame, Ack):
            self._on_ack(frame, now)
        elif isinstance(frame, Ping):
            self._queue(pid, Pong(frame.opaque))
        elif isinstance(frame, Pong):
            rtt = now - frame.opaque / 1e6
            if 0 <= rtt < 600:
                self.scheduler.on_rtt(path, rtt)
        elif isinstance(frame, Fin):
            self._on_fin(frame)
        elif isinstance(frame, Abort):
            why = frame.reason or frame.code.name.lower()
            self.failure = SessionAborted(f"peer aborted the session: {why}; {progress_line(self)}")
            self._wake |= Wake.STATE | Wake.READ | Wake.WRITE
        else:
            raise RemoteProtocolError(f"unexpected {type(frame).__name__.upper()} frame during the session")

    def _on_data(self, path: PathState, frame: Data, now: float) -> None:
        size = len(frame.payload)
        if self.peer_fin is not None and frame.offset + size > self.peer_fin:
            raise RemoteProtocolError("DATA past the end announced by FIN")
        path.received += size
        path.chunks_received += 1
        self._last_rx_path = path.id
        if self.reorder.add(frame.offset, frame.payload):
            self._wake |= Wake.READ
        self._note_unacked(size, now)
        if self._unacked_rx >= self.config.ack_bytes:
            self._request_ack(path.id)

    def _on_ack(self, ack: Ack, now: float) -> None:
        if self.sendbuf.on_ack(ack.delivered):
            self._wake |= Wake.WRITE
            self._wake_ready()  # the window slid
        for pid, received in ack.received:
            path = self.paths.get(pid)
            if path is not None and path.alive and received <= path.sent:
                before = path.in_flight
                self.scheduler.on_peer_received(path, received, now)
                if path.in_flight < before:
                    self._wake_send(pid)
        if ack.fin and self.sendbuf.eof and not self.fin_acked:
            self.fin_acked = True
            self._wake |= Wake.STATE
        if self.send_done:
            self._wake |= Wake.STATE

    def _on_fin(self, fin: Fin) -> None:
        if self.peer_fin is not None:
            if fin.total != self.peer_fin or fin.digest != self.peer_digest:
                raise RemoteProtocolError("peer sent two FINs that differ")
            self._request_ack()  # our ACK of the FIN may have been lost: say it again
            return
        if fin.total < self.reorder.next_offset:
            raise RemoteProtocolError("FIN announces less data than already arrived")
        self.peer_fin, self.peer_digest = fin.total, fin.digest
        self._request_ack()
        if self.recv_done:
            self._finish_receiving()
        self._wake |= Wake.STATE | Wake.READ

    def next_frame(self, pid: int, now: float) -> Frame | None:
        """The next frame path pid should send, or None (the path waits for a wake)."""
        path = self.paths.get(pid)
        if path is None or not path.alive:
            return None
        frame = self._next_frame(path, now)
        if frame is not None:
            path.last_sent = now
            if type(frame) is Data and path.in_flight == len(frame.payload):  # was idle: its stale clock starts
                self._timer_at(path.deadline(self._hb))
        return frame

    def _next_frame(self, path: PathState, now: float) -> Frame | None:
        ctrl = self._ctrl[path.id]
        if ctrl:
            return ctrl.popleft()
        if path.id in self._ack_due:
            return self._make_ack(path.id)
        if self.failure is not None:
            return None
        return self.striper.next_data(path, now)

    def _make_ack(self, pid: int) -> Ack:
        self._ack_due.discard(pid)
        self._unacked_rx, self._unacked_since = 0, None
        counters = tuple((p.id, p.received) for p in self.paths.values())
        return Ack(self.reorder.consumed, counters, bool(self.digest_ok))

    # -- time ------------------------------------------------------------------------------------------------------
    def handle_timer(self, now: float) -> None:
        """Pings, delayed ACKs, FIN retries, silence detection and the all-paths-down timeout; results leave as
        events (PathStale, PathFailed, SessionTerminated) and frames to send."""
        cfg, hb = self.config, self._hb
        for path in self.alive_paths:
            verdict = path.silence(now, hb)
            if verdict is Silence.DEAD:
                self.fail_path(path.id, f"no answer for {now - path.last_heard:.1f} s", now)
                continue
            if verdict is Silence.STALE:
                requeued = self.striper.path_lost(path.id)
                self._wake_send()  # the others take its chunks; backups take over if it was the last regular
                self._emit(PathStale(path.id, now - path.last_heard, requeued))
            if path.ping_due(now, hb):
                self._queue(path.id, Ping(int(now * 1e6) & 0xFFFF_FFFF_FFFF_FFFF))
        if self._unacked_since is not None and now - self._unacked_since >= cfg.ack_delay:
            self._request_ack()
            self._unacked_since = None
        if self.sendbuf.eof and not self.fin_acked and self._fin_sent_at is not None:
            if now - self._fin_sent_at >= cfg.fin_retry:
                self._fin_sent_at = now
                if self.sendbuf.acked >= self.sendbuf.written:
                    for path in self.alive_paths:
                        self._queue(path.id, self._fin())
        self._check_all_down(now)
        self._check_terminated()

    def _check_all_down(self, now: float) -> None:
        """Every path down for path_timeout (or, when the peer itself closed or reset every one, for
        peer_gone_grace: its process is gone): the session is aborted with TIMEOUT."""
        since = self._all_down_since
        if since is None or self.failure is not None or self.alive_paths:
            return
        waited, gone = now - since, self._peer_gone
        if waited >= self.config.path_timeout or (gone and waited >= self.config.peer_gone_grace):
            why = ("the peer closed every path (its process is gone?)" if gone
                   else f"no path came back within {waited:.0f} s")
            self.abort(AbortCode.TIMEOUT, why, TransferFailed(f"transfer failed: {why}; {progress_line(self)}"))

    def abort(self, code: AbortCode, reason: str, error: SctpbondError) -> None:
        """Give up: tell the peer why on every path and record the local error."""
        if self.failure is None:
            self.failure = error
        for path in self.alive_paths:
            self._ctrl[path.id].clear()
            self._ctrl[path.id].append(Abort(code, reason))
        self._wake_send()
        self._wake |= Wake.STATE | Wake.READ | Wake.WRITE
        self._check_terminated()

    # -- reporting -------------------------------------------------------------------------------------------------
    def stats(self, now: float) -> SessionStats:
        """What this session did so far, in raw numbers (stats.to_json gives --stats-json's form)."""
        return snapshot(self, now)

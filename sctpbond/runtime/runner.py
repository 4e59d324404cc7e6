"""Threaded driver for one Session: the only place with threads, clocks and file descriptors.

One sender and one receiver thread per path channel (blocking calls release the GIL, so paths overlap; measured
faster than a selector loop, see docs/design.md), one thread pumping the application's input in, one pumping
in-order output out, and a timer thread that sleeps until the core's `get_timer()` deadline. Every call into the
core holds one lock; the core's `take_wake()` says which waiting threads to wake, and its events (`next_event()`)
what to do with sockets and callbacks. The runner decides nothing about the protocol: which path is dead, when
to give up, what a peer's bytes mean are the core's decisions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import (
    RemoteProtocolError,
    SctpbondError,
    SessionAborted,
    TransferFailed,
    TransportError,
)
from ..proto.events import AllPathsDown, PathFailed, PathStale, SessionTerminated
from ..proto.frames import SESSION, AbortCode, Data, decode, encode_parts
from ..proto.session import Session, Wake
from ..proto.stats import to_json
from ..transport.base import Channel
from .endpoints import Endpoint

if TYPE_CHECKING:
    from .progress import ProgressDisplay

LOG = logging.getLogger("sctpbond")


@dataclass(frozen=True)
class RunnerConfig:
    close_timeout: float = 3.0  # after completion, how long to wait for the peer's orderly close
    # The timer thread runs the core's timers when get_timer() says, but no sooner than min_timer after the last
    # run: each run takes the lock and walks every path, and a 20 ms cadence was measurable CPU on a slow machine
    # (4 x 20 SCTP in the VM: 68 against 70 Mbit/s at 50 ms); a deadline a little late costs nothing.
    min_timer: float = 0.02
    rtt_poll: float = 0.25  # how often the transports' own RTTs are read (they size the paths' quotas)
    read_block: int = 1 << 20
    limit_rate: float | None = None  # bytes/s this side feeds into the session (--limit-rate), None: no cap
    progress: bool = False  # live progress on stderr (runtime/progress.py)
    expected_size: int | None = None  # bytes we will send, when known (a regular file): progress shows an ETA


class SessionRunner:
    """Drives one session between its paths' channels and its application side, an Endpoint (descriptors, a
    relay socket, a command, or the Python API's in-process stream)."""

    def __init__(self, session: Session, *, endpoint: Endpoint, config: RunnerConfig = RunnerConfig(),
                 on_path_down: Callable[[int, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.endpoint = endpoint
        self.config, self.clock = config, clock
        self.on_path_down = on_path_down
        self._started = False
        self._display: ProgressDisplay | None = None
        self.lock = threading.Lock()
        self._cond_read = threading.Condition(self.lock)
        self._cond_write = threading.Condition(self.lock)
        self._cond_state = threading.Condition(self.lock)
        self._send_conds: dict[int, threading.Condition] = {}
        self.channels: dict[int, Channel] = {}
        self.labels: dict[int, str] = {}
        self._users: dict[Channel, int] = {}  # path threads still using each channel (its sender and receiver)
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._stop = threading.Event()
        self._cond_timer = threading.Condition(self.lock)
        self.output_bytes = 0
        self._final_info: dict[int, dict] = {}

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _spawn(self, name: str, target: Callable, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()  # before it is listed: _shutdown() joins listed threads
        self._threads.append(t)

    def _wake(self) -> None:
        """Call with the lock held after touching the session."""
        wake = self.session.take_wake()
        if not wake:
            return
        if wake & Wake.STATE:
            self._cond_state.notify_all()
            wake |= Wake.READ | Wake.WRITE
        if wake & Wake.READ:
            self._cond_read.notify_all()
        if wake & Wake.WRITE:
            self._cond_write.notify_all()
        if wake & Wake.SEND:
            pids = self.session.take_send_wakes()
            for pid, cond in self._send_conds.items():
                if pids is None or pid in pids:
                    cond.notify()
        if wake & Wake.TIMER:
            self._cond_timer.notify()
        if self.session.has_events:
            self._on_events()

    def _on_events(self) -> None:
        """Lock held: act on what the core says happened (log it, close a failed path's socket, let the dialler
        re-dial it). Closing a socket is a non-blocking shutdown; the callback only starts a thread."""
        session = self.session
        while (event := session.next_event()) is not None:
            match event:
                case PathFailed(pid, reason, requeued, _):
                    channel = self.channels.get(pid)
                    if channel is None or self._closing:
                        continue
                    LOG.warning(f"path {pid} ({channel.label}) down: {reason}; {requeued} bytes to resend elsewhere")
                    channel.abort()
                    if self.on_path_down is not None:
                        self.on_path_down(pid, reason)
                case PathStale(pid, silent, requeued) if requeued:
                    LOG.info(f"path {pid} silent for {silent:.1f} s: {requeued} bytes sent again on the others")
                case SessionTerminated(error) if error is not None:
                    self.endpoint.session_failed(error)  # an in-process writer or reader stops waiting now
                case AllPathsDown(timeout):
                    if not self._closing:
                        LOG.warning(f"all paths are down; waiting up to {timeout:g} s for one to come back")
                case _:  # PathJoined: the server and client say who joined; StreamEnded, SessionTerminated: the
                    pass  # pumps and run() see them in the state they wait on

    @property
    def finished(self) -> bool:
        return self.session.failure is not None or self.session.complete

    def _fail(self, code: AbortCode, error: SctpbondError) -> None:
        """Lock held: give up the session with a local error, telling the peer why."""
        self.session.abort(code, str(error), error)
        self._wake()

    # -- paths ----------------------------------------------------------------------------------------------------
    def attach(self, pid: int, channel: Channel, backup: bool = False) -> None:
        """A channel finished its handshake for path pid (new path, or a re-join replacing a dead one);
        `backup`: the dialler's HELLO made it a backup path."""
        old = None
        with self.lock:
            if self._closing:
                channel.abort()
                channel.close()
                return
            old = self.channels.get(pid)
            self.channels[pid] = channel
            self.labels[pid] = channel.label
            self._send_conds.setdefault(pid, threading.Condition(self.lock))
            self._users[channel] = 2
            channel.set_send_stall(self.session.config.dead_after)
            self.session.add_path(pid, self.clock(), channel.label, channel.max_frame, backup)
            self._wake()
        if old is not None:
            old.abort()
        self._spawn(f"send-{pid}", self._sender, pid, channel)
        self._spawn(f"recv-{pid}", self._receiver, pid, channel)

    def _path_down(self, pid: int, channel: Channel, reason: str) -> None:
        """The transport lost path pid (closed or reset by the peer, a failed send): tell the core."""
        with self.lock:
            if self.channels.get(pid) is not channel or self._closing:
                channel.abort()
                return  # superseded by a re-join, or we are closing anyway
            self.session.fail_path(pid, reason, self.clock(), peer_closed=True)
            self._wake()
        channel.abort()

    def _release(self, pid: int, channel: Channel) -> None:
        """A path thread is done with `channel`: the last one closes it if the path no longer uses it (failed or
        replaced by a re-join). For SCTP that is when an aborted association sends its ABORT."""
        with self.lock:
            left = self._users.get(channel, 1) - 1
            if left > 0:
                self._users[channel] = left
                return
            self._users.pop(channel, None)
            path = self.session.paths.get(pid)
            unused = self.channels.get(pid) is not channel or path is None or not path.alive
            if self._closing or not unused:
                return  # _shutdown closes the channels still in use
        channel.abort()
        channel.close()

    def _sender(self, pid: int, channel: Channel) -> None:
        try:
            self._send_loop(pid, channel)
        finally:
            self._release(pid, channel)

    def _receiver(self, pid: int, channel: Channel) -> None:
        try:
            self._receive_loop(pid, channel)
        finally:
            self._release(pid, channel)

    def _send_loop(self, pid: int, channel: Channel) -> None:
        session, cond = self.session, self._send_conds[pid]
        try:
            while True:
                with self.lock:
                    while True:
                        if self.channels.get(pid) is not channel or not session.paths[pid].alive:
                            return
                        frame = session.next_frame(pid, self.clock())
                        if frame is not None:
                            self._wake()  # e.g. Wake.TIMER: data in flight arms the path's stale deadline
                            break
                        if self._closing:
                            channel.shutdown_write()
                            return
                        cond.wait(0.25)
                channel.send(encode_parts(frame), data=isinstance(frame, Data))
        except TransportError as exc:
            self._path_down(pid, channel, str(exc))

    def _receive_loop(self, pid: int, channel: Channel) -> None:
        session = self.session
        try:
            while True:
                buf = channel.recv(SESSION)
                if buf is None:
                    with self.lock:
                        done = self._closing or self.session.complete
                    if not done:
                        self._path_down(pid, channel, "closed by the peer")
                    return
                frame = decode(buf, SESSION)
                with self.lock:
                    if self.channels.get(pid) is not channel:
                        return
                    session.receive(pid, frame, self.clock())
                    self._wake()
        except RemoteProtocolError as exc:  # refused by the transport or the opener: the core decides what it costs
            with self.lock:
                if self.channels.get(pid) is channel and not self._closing:
                    session.peer_violated(pid, exc, self.clock())
                    self._wake()
        except TransportError as exc:
            self._path_down(pid, channel, str(exc))
        except Exception as exc:  # noqa: BLE001 -- a bug reached from a peer's bytes: one line, never a traceback
            with self.lock:
                self._fail(AbortCode.INTERNAL, SctpbondError(f"internal error on path {pid}: "
                                                             f"{type(exc).__name__}: {exc}"))

    # -- application side ----------------------------------------------------------------------------------------
    def _input_pump(self) -> None:
        session, endpoint, rate = self.session, self.endpoint, self.config.limit_rate
        block = min(self.config.read_block, max(1, session.sendbuf.cap // 4))  # never wait for a drained buffer
        if rate is not None:  # small reads keep a rate limit smooth (about 20 per second)
            block = max(1024, min(block, int(rate / 20)))
        paced_from, paced_bytes = time.monotonic(), 0
        while True:
            if rate is not None:  # pace what goes in: the paths cannot send what was never written
                ahead = paced_from + paced_bytes / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                elif ahead < -0.25:  # stalled by the peer or the input: no burst to catch up afterwards
                    paced_from, paced_bytes = time.monotonic(), 0
            try:
                data = endpoint.read(block)
            except OSError as exc:
                with self.lock:
                    self._fail(AbortCode.CANCELLED, TransferFailed(f"cannot read input: {exc.strerror or exc}"))
                return
            if data:
                session.hash_sent(data)  # only this thread feeds write(): off the lock, in stream order
            with self.lock:
                if not data:
                    session.close_send(self.clock())
                    self._wake()
                    return
                while session.send_space() < len(data) and not self.finished:
                    self._cond_write.wait(0.5)
                if self.finished:
                    return
                session.write(data, digest=False)
                self._wake()
            paced_bytes += len(data)

    def _output_pump(self) -> None:
        session, endpoint = self.session, self.endpoint
        while True:
            with self.lock:
                while not (chunks := session.read(digest=False)):
                    if session.failure is not None or session.recv_done:
                        break
                    self._cond_read.wait(0.5)
            if not chunks:  # (a failure has reached the endpoint already: SessionTerminated in _on_events)
                if session.failure is None:
                    endpoint.recv_done()  # all the peer sent is written: pass the end on (a relay's half-close)
                return
            total = 0
            try:
                for chunk in chunks:
                    session.hash_received(chunk)  # outside the lock; consumed() below checks it at the end
                    endpoint.write(chunk)
                    total += len(chunk)
            except OSError as exc:
                with self.lock:
                    self._fail(AbortCode.CANCELLED, TransferFailed(f"cannot write output: {exc.strerror or exc}"))
                return
            with self.lock:
                self.output_bytes += total
                session.consumed(total, self.clock())
                self._wake()

    def _ticker(self) -> None:
        """Run the core's timers at its deadline (get_timer), poll the transports' RTTs every rtt_poll."""
        cfg, session = self.config, self.session
        rtt_polled = info_polled = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - rtt_polled >= cfg.rtt_poll:
                rtt_polled = time.monotonic()
                refresh_info = rtt_polled - info_polled >= 1.0
                if refresh_info:
                    info_polled = rtt_polled
                self._poll_transports(refresh_info)
            with self.lock:
                session.handle_timer(self.clock())
                self._wake()
                if self._stop.is_set():
                    return
                deadline = session.get_timer()
                now = self.clock()
                wait = cfg.rtt_poll if deadline is None else deadline - now
                self._cond_timer.wait(min(max(wait, cfg.min_timer), cfg.rtt_poll - (time.monotonic() - rtt_polled)))

    def _poll_transports(self, refresh_info: bool) -> None:
        """Hand the core each transport's RTT and, with `refresh_info`, refresh the transport state kept for the
        stats (SCTP srtt, cwnd, primary). Both are read outside the lock: system calls per path."""
        with self.lock:
            live = list(self.channels.items())
        rtts = [(pid, channel, channel.rtt()) for pid, channel in live]
        if refresh_info:
            for _, channel in live:
                channel.info()
        with self.lock:
            for pid, channel, rtt in rtts:
                if self.channels.get(pid) is channel:
                    self.session.transport_rtt(pid, rtt)

    # -- running ---------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Cheap counters for the progress display."""
        with self.lock:
            s = self.session
            paths = {p.id: (p.label, p.sent + p.received, p.alive) for p in s.paths.values()}
            return {"acked": s.sendbuf.acked, "written": s.sendbuf.written, "received": s.reorder.consumed,
                    "paths": paths}

    def _start_progress(self) -> ProgressDisplay | None:
        if not self.config.progress:
            return None
        from .progress import ProgressDisplay

        sending = self.endpoint.sends
        display = ProgressDisplay(self.snapshot, total=self.config.expected_size if sending else None,
                                  sending=sending)
        display.start()
        return display

    def start(self) -> None:
        """Start moving data (the application's pumps and the timer); returns at once."""
        if self._started:
            return
        self._started = True
        self._spawn("input", self._input_pump)
        self._spawn("output", self._output_pump)
        self._spawn("ticker", self._ticker)
        self._display = self._start_progress()

    def run(self) -> None:
        """Move data until both directions are complete, or raise the reason they cannot be (start() if that was
        not done yet, then wait)."""
        self.start()
        display = self._display
        try:
            with self.lock:
                while not self.finished:
                    self._cond_state.wait(0.5)
        except KeyboardInterrupt:
            with self.lock:
                self._fail(AbortCode.CANCELLED, SessionAborted("interrupted"))
        finally:
            if display is not None:
                display.stop()
            self._shutdown()
        if self.session.failure is not None:
            raise self.session.failure

    def _join(self, names: tuple[str, ...], timeout: float) -> bool:
        """Wait, at most `timeout` in all, for our threads whose names start with one of `names`; True if none of
        them is left running."""
        deadline = time.monotonic() + timeout
        threads = [t for t in list(self._threads) if t.name.startswith(names)]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def join_pumps(self, timeout: float) -> bool:
        """After run(): wait for the threads using the endpoint to end; True if none is left."""
        return self._join(("input", "output"), timeout)

    def _shutdown(self) -> None:
        """Let the senders flush (closing ACKs, ABORT) and shut down writes; after a success also wait for the
        peer's orderly close, so that our last ACK is not lost to a reset."""
        with self.lock:
            self._closing = True
            for cond in self._send_conds.values():
                cond.notify_all()
            channels = dict(self.channels)
            success = self.session.failure is None
        self._join(("send-", "recv-") if success else ("send-",), self.config.close_timeout)
        self._stop.set()
        with self.lock:
            self._cond_timer.notify()
        for pid, channel in channels.items():  # last transport state, while the sockets still exist
            self._final_info[pid] = channel.info()
        for channel in channels.values():
            with self.lock:
                in_use = channel in self._users
            if in_use or not success:  # a failure, or threads still on it: tear it down (SCTP: ABORT)
                channel.abort()
            channel.close()  # after a success with its threads gone: an orderly close

    def stats(self) -> dict:
        with self.lock:
            stats = to_json(self.session.stats(self.clock()))
            for entry in stats["paths"]:
                channel = self.channels.get(entry["id"])
                entry["transport"] = channel.transport if channel else None
                if channel is not None:
                    entry["transport_info"] = self._final_info.get(entry["id"]) or channel.info()
        stats["output_bytes"] = self.output_bytes
        return stats

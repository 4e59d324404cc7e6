"""The listening end: accept connections, run handshakes (bounded), create sessions, route joining paths.

A Server holds its live sessions in a dict token -> Served (runner + endpoint); a JOIN is routed by its token, so
sessions never see each other's paths. Where each session's stream goes is an Endpoint made by a factory once the
handshake is over (endpoints.py: stdio, -o FILE, a relay socket, a command).

A listener is an attack surface: until a peer has proved the key (or, keyless, finished its handshake) it costs
that peer a bounded slot and nothing else. Handshakes in progress are capped in all and per source address (as
sshd's MaxStartups and PerSourcePenalties do), so one address can never fill the table; a session counts
against --max-sessions only once its first path is authenticated. Every refusal (garbage, a port scan, a silent
or truncated handshake, a wrong key, parameters out of range) is one log line, the peer is told why when it
can be, and the listener keeps waiting for its real peer, one-shot or not.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import BusyError, SctpbondError, TransportError
from ..proto.frames import NONCE_SIZE, TOKEN_SIZE, Abort, AbortCode, HelloKind, encode
from ..proto.handshake import Negotiated, ServerHandshake
from ..proto.session import Session
from ..routes import welcome_addresses
from ..transport.base import Channel, Listener
from ..transport.sealed import secure
from .endpoints import Endpoint, EndpointFactory, SessionInfo, stdio
from .options import Options
from .runner import LOG, SessionRunner


@dataclass(eq=False)
class Served:
    """One session of this listener: its runner, where its stream goes, and how it ended."""

    number: int
    peer: tuple[str, int]
    token: bytes
    runner: SessionRunner
    endpoint: Endpoint
    stats: dict | None = None
    error: SctpbondError | None = None


class Server:
    """Serves one session (the default, as ncat does) or, with keep_open, many at once, on one or more listeners.

    `endpoints` makes each session's Endpoint once its peer has authenticated (default: source_fd/sink_fd);
    `on_session_end(served)` is called as each session ends (keep_open: from the session's own thread).
    """

    def __init__(self, listeners: Sequence[Listener], *, options: Options = Options(), source_fd: int | None = 0,
                 sink_fd: int | None = 1, endpoints: EndpointFactory | None = None, keep_open: bool = False,
                 max_sessions: int = 16, max_pending: int = 64, max_pending_per_source: int = 8,
                 on_session_end: Callable[[Served], None] | None = None) -> None:
        self.listeners = list(listeners)
        self.options = options
        self.endpoints = endpoints if endpoints is not None else stdio(source_fd, sink_fd)
        self.keep_open = keep_open
        self.max_sessions = max(1, max_sessions) if keep_open else 1
        self.max_pending = max_pending
        self.max_pending_per_source = max(1, min(max_pending_per_source, max_pending))
        self.on_session_end = on_session_end
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()  # handshakes in progress, per source address
        self._claims = 0  # authenticated NEW sessions not yet in `sessions` (they hold a slot)
        self.sessions: dict[bytes, Served] = {}  # token -> live session: joins are routed by token
        self._reserved: set[bytes] = set()  # tokens of sessions authenticated but not yet in `sessions`
        self._registered = threading.Condition(self._lock)
        self.started = 0  # sessions authenticated so far (numbers them)
        self._first: Served | None = None  # one-session mode: the session
        self._fatal: SctpbondError | None = None  # one-session mode: why the listener must end without one
        self._decided = threading.Event()  # one-session mode: _first or _fatal is set
        self._stop = threading.Event()
        self._deadlines: dict[Channel, threading.Timer] = {}  # handshakes in progress -> their deadline
        self.rejected = 0
        self._threads: list[threading.Thread] = []
        self._accept_deadline: float | None = None
        self._accept_timeout: float | None = None
        self.on_no_session: Callable[[], None] | None = None  # one-session mode: the accept timeout passed

    # -- accepting --------------------------------------------------------------------------------------------------
    def _accept_loop(self, listener: Listener) -> None:
        while not self._stop.is_set():
            deadline = self._accept_deadline
            with self._lock:
                starting = self._claims > 0  # an authenticated session is being set up: it is in time
            if deadline is not None and time.monotonic() > deadline and not self._decided.is_set() and not starting:
                self._end(SctpbondError(f"no peer connected within {self._accept_timeout:g} s"))
                if self.on_no_session is not None:
                    self.on_no_session()
                return
            try:
                channel = listener.accept(0.2)
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if channel is None:
                continue
            refusal = self._admit(channel.remote[0])
            if refusal:
                self._reject(channel, refusal)
                continue
            threading.Thread(target=self._handle, args=(channel,), name="handshake", daemon=True).start()

    def _admit(self, source: str) -> str:
        """Take a handshake slot for a connection from `source`, or say why not."""
        with self._lock:
            if sum(self._pending.values()) >= self.max_pending:
                return "too many connections still in their handshake"
            if self._pending[source] >= self.max_pending_per_source:
                return f"{source} already has {self.max_pending_per_source} connections in their handshake"
            self._pending[source] += 1
        return ""

    def _reject(self, channel: Channel, why: str, reply: Abort | None = None) -> None:
        self.rejected += 1
        LOG.warning(f"rejected connection from {channel.remote[0]}:{channel.remote[1]}: {why}")
        if reply is not None:
            try:
                channel.send((encode(reply),))
            except TransportError:
                pass
        channel.abort()
        channel.close()

    def _handle(self, channel: Channel) -> None:
        source = channel.remote[0]
        try:
            self._handshake_and_attach(channel)
        except Exception as exc:  # a bug must not leak the slot, print a traceback or take the listener down
            self._reject(channel, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._pending[source] -= 1
                if self._pending[source] <= 0:
                    del self._pending[source]
                deadline = self._deadlines.pop(channel, None)
            if deadline is not None:  # every way out of the handshake stops its deadline
                deadline.cancel()

    def _receive(self, channel: Channel, hs: ServerHandshake) -> memoryview:
        buf = channel.recv(hs.expect)  # only the next handshake frame, at its exact length
        if buf is None:
            raise TransportError("closed during the handshake")
        return buf

    def _handshake_and_attach(self, channel: Channel) -> None:
        opts = self.options
        hs = ServerHandshake(key=opts.key, nonce=secrets.token_bytes(NONCE_SIZE), window=opts.session.window,
                             max_chunk=opts.session.max_chunk, new_token=lambda: secrets.token_bytes(TOKEN_SIZE),
                             knows=self._knows,
                             addresses=welcome_addresses(opts.advertise, self.listeners, channel),
                             require_encrypt=opts.encrypt, max_paths=opts.session.max_paths)
        channel.set_timeout(opts.handshake_timeout)
        # The socket timeout bounds each read; this deadline bounds the whole handshake, so a peer that trickles
        # one byte at a time cannot hold a handshake slot for ever.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            channel.abort()

        deadline = threading.Timer(opts.handshake_timeout, expire)
        deadline.daemon = True
        with self._lock:
            self._deadlines[channel] = deadline
        deadline.start()
        claimed = False
        try:
            hs.receive_hello(self._receive(channel, hs))
            channel.send((hs.welcome(),))
            neg = hs.receive_auth(self._receive(channel, hs))
            if neg.kind == HelloKind.NEW:  # authenticated: only now does it hold a session slot
                self._claim(neg.token)
                claimed = True
            channel.send((hs.ready(),))
            channel.order_until_heard()
            deadline.cancel()
            if expired.is_set():  # it fired just as the handshake finished: the channel is already aborted
                raise TransportError("handshake not finished in time")
        except SctpbondError as exc:
            deadline.cancel()
            if claimed:
                self._unclaim(hs.token)
            error = (TransportError(f"handshake not finished within {opts.handshake_timeout:g} s")
                     if expired.is_set() else exc)
            told = error.from_peer or isinstance(error, TransportError)
            self._reject(channel, str(error), None if told else Abort(AbortCode(error.abort_code), error.peer_reason))
            return
        channel.set_timeout(None)
        secured = secure(channel, neg.keys, neg.encrypt)
        if neg.kind == HelloKind.NEW:
            self._start_session(secured, neg)
        else:
            self._join(secured, neg)

    def _knows(self, token: bytes) -> bool:
        with self._lock:
            return token in self.sessions or token in self._reserved

    def _claim(self, token: bytes) -> None:
        """An authenticated NEW session takes a slot (BusyError if there is none); paths may join it from now on."""
        with self._lock:
            if not self.keep_open and (self._claims or self._first is not None or self._fatal is not None):
                raise BusyError("listener already serves a session")
            if len(self.sessions) + self._claims >= self.max_sessions:
                raise BusyError(f"listener is at its limit of {self.max_sessions} sessions at once (--max-sessions)")
            self._claims += 1
            self._reserved.add(token)

    def _unclaim(self, token: bytes) -> None:
        with self._lock:
            self._claims -= 1
            self._reserved.discard(token)
            self._registered.notify_all()

    def _end(self, error: SctpbondError) -> None:
        """One-session mode: the listener ends with `error` without serving a session (a local failure)."""
        if self.keep_open:
            return
        with self._lock:
            if self._first is None and self._fatal is None:
                self._fatal = error
        self._decided.set()

    def _start_session(self, channel: Channel, neg: Negotiated) -> None:
        """After READY: open where the stream goes (the -o file is created only now), make the session, serve it.
        Whatever fails releases the slot, the token and the endpoint, and tells the peer (sealed, if keyed)."""
        with self._lock:
            self.started += 1
            info = SessionInfo(self.started, channel.remote)
        endpoint: Endpoint | None = None
        try:
            # The dialler's HELLO decides --redundant for both directions.
            config = dataclasses.replace(self.options.session, redundant=neg.redundant)
            session = Session(config, peer_window=neg.peer_window,
                              peer_max_chunk=neg.peer_max_chunk, now=time.monotonic())
            endpoint = self.endpoints(info)
            runner = SessionRunner(session, endpoint=endpoint, config=self.options.runner)
        except SctpbondError as exc:
            try:
                channel.send((encode(Abort(AbortCode.CANCELLED, str(exc))),))
            except TransportError:
                pass
            self._abandon(channel, neg.token, endpoint, f"session {info.number}: {exc}")
            self._end(exc)
            return
        served = Served(info.number, info.peer, neg.token, runner, endpoint)
        with self._lock:
            late = not self.keep_open and self._fatal is not None  # the listener gave up meanwhile
        if late:
            self._abandon(channel, neg.token, endpoint, f"session {info.number}: the listener already ended")
            return
        with self._lock:
            self.sessions[neg.token] = served
            self._reserved.discard(neg.token)
            self._registered.notify_all()
            self._claims -= 1
            if not self.keep_open:
                self._first = served
        where = f" ({endpoint.label})" if endpoint.label else ""
        LOG.info(f"session {info.number} started by {channel.remote[0]} over {channel.transport}{where}")
        runner.attach(neg.path_id, channel, neg.backup)
        runner.start()  # data flows from now on; run() (in _serve) waits for the end
        if self.keep_open:
            threading.Thread(target=self._serve, args=(served,), name=f"session-{info.number}", daemon=True).start()
        else:
            self._decided.set()  # run() serves it in the main thread (Ctrl-C then tells the peer)

    def _abandon(self, channel: Channel, token: bytes, endpoint: Endpoint | None, why: str) -> None:
        """A session that could not start: give back its slot and token, release its endpoint, log why."""
        self._unclaim(token)
        if endpoint is not None:
            endpoint.stop()
            endpoint.close(True)
        self._reject(channel, why)

    def _join(self, channel: Channel, neg: Negotiated) -> None:
        with self._lock:
            self._registered.wait_for(lambda: neg.token not in self._reserved, 5.0)
            joined = self.sessions.get(neg.token)
        if joined is None:  # the session ended (or failed to start) while this path was in its handshake
            channel.abort()
            channel.close()
            return
        joined.runner.attach(neg.path_id, channel, neg.backup)
        LOG.info(f"path {neg.path_id} of session {joined.number} joined from {channel.remote[0]} "
                 f"over {channel.transport}" + (" (backup)" if neg.backup else ""))

    def _serve(self, served: Served) -> None:
        """Run one session to its end, release its endpoint and forget it; never raises."""
        try:
            served.runner.run()
            served.stats = served.runner.stats()
        except SctpbondError as exc:
            served.error = exc
        except Exception as exc:  # a bug in one session must not take the listener (or other sessions) down
            served.error = SctpbondError(f"internal error: {type(exc).__name__}: {exc}")
        endpoint = served.endpoint
        try:
            if served.error is not None:
                endpoint.stop()
            endpoint.close(served.runner.join_pumps(endpoint.join_timeout))
        except Exception as exc:
            LOG.warning(f"session {served.number}: cleaning up {endpoint.label or 'its endpoint'} failed: {exc}")
        with self._lock:
            self.sessions.pop(served.token, None)
        if self.on_session_end is not None:
            try:
                self.on_session_end(served)
            except Exception as exc:
                LOG.warning(f"session {served.number}: {type(exc).__name__}: {exc}")

    # -- running ----------------------------------------------------------------------------------------------------
    def start(self, accept_timeout: float | None = None) -> None:
        """Start accepting (one thread per listener); returns at once. One-session mode: with accept_timeout,
        no session by then ends the listener (wait() raises why, and on_no_session is called)."""
        self._accept_deadline = None if accept_timeout is None else time.monotonic() + accept_timeout
        self._accept_timeout = accept_timeout
        self._threads = [threading.Thread(target=self._accept_loop, args=(lst,), name="accept", daemon=True)
                         for lst in self.listeners]
        for t in self._threads:
            t.start()

    def wait(self) -> dict:
        """One-session mode: wait for the session, run it to the end; returns its stats or raises why it failed.
        keep_open: serve sessions until stop() (each in its own thread); returns {}."""
        try:
            if self.keep_open:
                while not self._stop.wait(0.5):
                    pass
                return {}
            self._decided.wait()
            if self._fatal is not None:
                raise self._fatal
            served = self._first
            assert served is not None
            self._serve(served)
            if served.error is not None:
                raise served.error
            assert served.stats is not None
            return served.stats
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(1.0)
            for lst in self.listeners:
                lst.close()

    def run(self, accept_timeout: float | None = None) -> dict:
        """start() then wait()."""
        self.start(accept_timeout)
        return self.wait()

    def stop(self) -> None:
        """keep_open: stop accepting (sessions already running go on to their end); run() returns."""
        self._stop.set()

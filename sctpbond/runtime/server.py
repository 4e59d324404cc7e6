"""The listening end: accept connections, run handshakes (bounded), create sessions, route joining paths.

A Server holds its live sessions in a dict token -> Served (runner + endpoint); a JOIN is routed by its token, so
sessions never see each other's paths. Where each session's stream goes is an Endpoint made by a factory once the
peer has authenticated (endpoints.py: stdio, -o FILE, a relay socket, a command).

By default the listener serves one session, as ncat does. A stranger's garbage, a port scan, a silent or
truncated handshake is logged in one line and the listener keeps waiting for its real peer; a peer with a wrong
key (or keyed against unkeyed) ends a one-session listener with exit 1 before anything is written. With
keep_open it serves up to max_sessions sessions at once, each isolated: a session that fails, or a wrong key, is
logged in one line and the listener goes on.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import AuthError, ProtocolError, SctpbondError, SessionAborted, TransportError
from ..proto.frames import NONCE_SIZE, TOKEN_SIZE, Abort, AbortCode, Hello, HelloKind, decode, encode
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
                 max_sessions: int = 16, max_pending: int = 64,
                 on_session_end: Callable[[Served], None] | None = None) -> None:
        self.listeners = list(listeners)
        self.options = options
        self.endpoints = endpoints if endpoints is not None else stdio(source_fd, sink_fd)
        self.keep_open = keep_open
        self.max_sessions = max(1, max_sessions) if keep_open else 1
        self.on_session_end = on_session_end
        self._lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(max_pending)
        self._claims = 0  # NEW handshakes admitted and not yet a session (or failed)
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

    # -- accepting --------------------------------------------------------------------------------------------------
    def _accept_loop(self, listener: Listener) -> None:
        while not self._stop.is_set():
            try:
                channel = listener.accept(0.2)
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if channel is None:
                continue
            if not self._pending.acquire(blocking=False):
                self._reject(channel, "too many connections still in their handshake")
                continue
            threading.Thread(target=self._handle, args=(channel,), name="handshake", daemon=True).start()

    def _reject(self, channel: Channel, why: str, reply: Abort | None = None, log: bool = True) -> None:
        self.rejected += 1
        if log:
            LOG.warning(f"rejected connection from {channel.remote[0]}:{channel.remote[1]}: {why}")
        if reply is not None:
            try:
                channel.send((encode(reply),))
            except TransportError:
                pass
        channel.abort()
        channel.close()

    def _handle(self, channel: Channel) -> None:
        try:
            self._handshake_and_attach(channel)
        finally:
            self._pending.release()
            with self._lock:
                deadline = self._deadlines.pop(channel, None)
            if deadline is not None:  # every way out of the handshake stops its deadline
                deadline.cancel()

    def _handshake_and_attach(self, channel: Channel) -> None:
        opts = self.options
        hs = ServerHandshake(key=opts.key, nonce=secrets.token_bytes(NONCE_SIZE), window=opts.session.window,
                             max_chunk=opts.session.max_chunk, new_token=lambda: secrets.token_bytes(TOKEN_SIZE),
                             knows=self._knows,
                             addresses=welcome_addresses(opts.advertise, self.listeners, channel),
                             require_encrypt=opts.encrypt)
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
        claimed_here = False
        endpoint: Endpoint | None = None
        info: SessionInfo | None = None
        hello: Hello | None = None
        try:
            first = True
            while hs.result is None:
                buf = channel.recv()
                if buf is None:
                    raise TransportError("closed during the handshake")
                frame = decode(buf)
                if first:
                    first = False
                    if isinstance(frame, Hello):
                        hello = frame
                        refusal = self._admit(frame)
                        if refusal is not None:
                            self._reject(channel, refusal.reason, refusal)
                            return
                        claimed_here = frame.kind == HelloKind.NEW
                reply = hs.receive(frame)
                if claimed_here and hs.result is not None:  # authenticated: now open where the stream goes
                    with self._lock:
                        self.started += 1
                        info = SessionInfo(self.started, channel.remote)
                    try:
                        endpoint = self.endpoints(info)
                    except SctpbondError as exc:
                        self._unclaim()
                        self._reject(channel, f"session {info.number}: {exc}", Abort(AbortCode.CANCELLED, str(exc)),
                                     log=self.keep_open)
                        self._end(exc)
                        return
                    with self._lock:  # paths may join as soon as READY is out, before _attach registers it
                        self._reserved.add(hs.result.token)
                channel.send((encode(reply),))
            deadline.cancel()
            if expired.is_set():  # it fired just as the handshake finished: the channel is already aborted
                raise TransportError("handshake not finished in time")
        except (ProtocolError, SessionAborted, TransportError) as exc:
            deadline.cancel()
            error = (TransportError(f"handshake not finished within {opts.handshake_timeout:g} s")
                     if expired.is_set() else exc)
            if claimed_here:
                self._unclaim()
                with self._lock:
                    self._reserved.discard(hs.token)
                    self._registered.notify_all()
            if endpoint is not None:
                endpoint.stop()
                endpoint.close(True)
            refusal = hs.reply if isinstance(hs.reply, Abort) else None
            if claimed_here and isinstance(error, AuthError):  # a NEW session with a wrong key, or keyed vs. unkeyed
                why = self._auth_failure(hello, refusal)
                self._reject(channel, f"authentication failed: {why}", refusal, log=self.keep_open)
                self._end(AuthError(f"authentication failed with {channel.remote[0]}: {why}; nothing was written"))
                return
            self._reject(channel, str(error), refusal)
            return
        channel.set_timeout(None)
        self._attach(secure(channel, hs.result.keys), hs.result, endpoint=endpoint, info=info)

    def _knows(self, token: bytes) -> bool:
        with self._lock:
            return token in self.sessions or token in self._reserved

    def _admit(self, hello: Hello) -> Abort | None:
        """Decide from HELLO alone whether this connection may go on (before any work is done for it)."""
        if hello.path_id >= self.options.session.max_paths:
            return Abort(AbortCode.TOO_MANY_PATHS, f"path id {hello.path_id} over the limit")
        if hello.kind == HelloKind.NEW:
            with self._lock:
                if not self.keep_open and (self._claims or self._first is not None or self._fatal is not None):
                    return Abort(AbortCode.BUSY, "listener already serves a session")
                if len(self.sessions) + self._claims >= self.max_sessions:
                    return Abort(AbortCode.BUSY, f"listener is at its limit of {self.max_sessions} sessions at once "
                                                 "(--max-sessions)")
                self._claims += 1
        return None

    def _unclaim(self) -> None:
        with self._lock:
            self._claims -= 1

    def _auth_failure(self, hello: Hello | None, reply: Abort | None) -> str:
        """Why a peer failed to authenticate, from the listener's side (the peer says the same from its end)."""
        if reply is None:  # the peer refused our proof
            why = "it does not have the same key"
        elif hello is not None and hello.keyed and self.options.key is None:
            why = "it uses a key and this listener has none (give both ends the same --key-file)"
        elif hello is not None and not hello.keyed and self.options.key is not None:
            why = "it has no key and this listener requires one (--key-file / SCTPBOND_KEY)"
        elif reply.reason == "wrong key":
            why = "it presented a wrong key"
        else:
            why = reply.reason
        return why

    def _end(self, error: SctpbondError) -> None:
        """One-session mode: the listener ends with `error` without serving a session."""
        if self.keep_open:
            return
        with self._lock:
            if self._first is None and self._fatal is None:
                self._fatal = error
        self._decided.set()

    def _attach(self, channel: Channel, neg: Negotiated, *, endpoint: Endpoint | None = None,
                info: SessionInfo | None = None) -> None:
        if neg.kind == HelloKind.NEW:
            assert endpoint is not None and info is not None
            session = Session(self.options.session, peer_window=neg.peer_window,
                              peer_max_chunk=neg.peer_max_chunk, now=time.monotonic())
            runner = SessionRunner(session, source_fd=endpoint.source_fd, sink_fd=endpoint.sink_fd,
                                   config=self.options.runner, on_recv_done=endpoint.recv_done)
            served = Served(info.number, info.peer, neg.token, runner, endpoint)
            with self._lock:
                self.sessions[neg.token] = served
                self._reserved.discard(neg.token)
                self._registered.notify_all()
                self._claims -= 1
                if not self.keep_open:
                    self._first = served
            where = f" ({endpoint.label})" if endpoint.label else ""
            LOG.info(f"session {info.number} started by {channel.remote[0]} over {channel.transport}{where}")
            runner.attach(neg.path_id, channel)
            if self.keep_open:
                threading.Thread(target=self._serve, args=(served,), name=f"session-{info.number}",
                                 daemon=True).start()
            else:
                self._decided.set()  # run() serves it in the main thread (Ctrl-C then tells the peer)
            return
        with self._lock:
            self._registered.wait_for(lambda: neg.token not in self._reserved, 5.0)
            joined = self.sessions.get(neg.token)
        if joined is None:  # the session ended (or failed to start) while this path was in its handshake
            channel.abort()
            channel.close()
            return
        joined.runner.attach(neg.path_id, channel)
        LOG.info(f"path {neg.path_id} of session {joined.number} joined from {channel.remote[0]} "
                 f"over {channel.transport}")

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
    def run(self, accept_timeout: float | None = None) -> dict:
        """One-session mode: wait for a session, run it to the end; returns its stats or raises why it failed.
        keep_open: serve sessions until stop() (each in its own thread); returns {}."""
        threads = [threading.Thread(target=self._accept_loop, args=(lst,), name="accept", daemon=True)
                   for lst in self.listeners]
        for t in threads:
            t.start()
        try:
            if self.keep_open:
                while not self._stop.wait(0.5):
                    pass
                return {}
            if not self._decided.wait(accept_timeout):
                raise SctpbondError(f"no peer connected within {accept_timeout:g} s")
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
            for t in threads:
                t.join(1.0)
            for lst in self.listeners:
                lst.close()

    def stop(self) -> None:
        """keep_open: stop accepting (sessions already running go on to their end); run() returns."""
        self._stop.set()

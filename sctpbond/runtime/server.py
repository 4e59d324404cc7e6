"""The listening end: accept connections, run handshakes (bounded), create the session, attach joining paths.

A stranger's garbage, a port scan, a silent connection or a wrong key is logged in one line and the listener
keeps waiting for its real peer: only an authenticated session can end it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence

from ..errors import ProtocolError, SctpbondError, SessionAborted, TransportError
from ..proto.frames import NONCE_SIZE, TOKEN_SIZE, Abort, AbortCode, Hello, HelloKind, decode, encode
from ..proto.handshake import Negotiated, ServerHandshake
from ..proto.session import Session
from ..transport.base import Channel, Listener
from .options import Options
from .runner import LOG, SessionRunner


class Server:
    """Serves one session (the default, as ncat does) on one or more listeners."""

    def __init__(self, listeners: Sequence[Listener], *, options: Options = Options(), source_fd: int | None = 1,
                 sink_fd: int | None = 0, max_pending: int = 64) -> None:
        self.listeners = list(listeners)
        self.options = options
        self.source_fd, self.sink_fd = source_fd, sink_fd
        self._lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(max_pending)
        self._claimed = False  # a NEW handshake is in progress or done
        self.token: bytes | None = None
        self.runner: SessionRunner | None = None
        self._started = threading.Event()
        self._stop = threading.Event()
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
        try:
            self._handshake_and_attach(channel)
        finally:
            self._pending.release()

    def _handshake_and_attach(self, channel: Channel) -> None:
        opts = self.options
        hs = ServerHandshake(key=opts.key, nonce=secrets.token_bytes(NONCE_SIZE), window=opts.session.window,
                             max_chunk=opts.session.max_chunk, new_token=lambda: secrets.token_bytes(TOKEN_SIZE),
                             knows=lambda token: self.token is not None and secrets.compare_digest(token, self.token))
        channel.set_timeout(opts.handshake_timeout)
        claimed_here = False
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
                        refusal = self._admit(frame)
                        if refusal is not None:
                            self._reject(channel, refusal.reason, refusal)
                            return
                        claimed_here = frame.kind == HelloKind.NEW
                channel.send((encode(hs.receive(frame)),))
        except (ProtocolError, SessionAborted, TransportError) as exc:
            if claimed_here:
                with self._lock:
                    self._claimed = False
            self._reject(channel, str(exc), hs.reply if isinstance(hs.reply, Abort) else None)
            return
        channel.set_timeout(None)
        self._attach(channel, hs.result)

    def _admit(self, hello: Hello) -> Abort | None:
        """Decide from HELLO alone whether this connection may go on (before any work is done for it)."""
        if hello.path_id >= self.options.session.max_paths:
            return Abort(AbortCode.TOO_MANY_PATHS, f"path id {hello.path_id} over the limit")
        if hello.kind == HelloKind.NEW:
            with self._lock:
                if self._claimed:
                    return Abort(AbortCode.BUSY, "listener already serves a session")
                self._claimed = True
        return None

    def _attach(self, channel: Channel, neg: Negotiated) -> None:
        if neg.kind == HelloKind.NEW:
            session = Session(self.options.session, peer_window=neg.peer_window,
                              peer_max_chunk=neg.peer_max_chunk, now=time.monotonic())
            runner = SessionRunner(session, source_fd=self.source_fd, sink_fd=self.sink_fd,
                                   config=self.options.runner)
            with self._lock:
                self.token, self.runner = neg.token, runner
            LOG.info(f"session started by {channel.remote[0]} over {channel.transport}")
            runner.attach(neg.path_id, channel)
            self._started.set()
            return
        runner = self.runner
        if runner is None:  # cannot happen: knows() accepted the token
            channel.abort()
            return
        runner.attach(neg.path_id, channel)
        LOG.info(f"path {neg.path_id} joined from {channel.remote[0]} over {channel.transport}")

    # -- running ----------------------------------------------------------------------------------------------------
    def run(self, accept_timeout: float | None = None) -> dict:
        """Wait for a session, run it to the end; returns its stats or raises why it failed."""
        threads = [threading.Thread(target=self._accept_loop, args=(lst,), name="accept", daemon=True)
                   for lst in self.listeners]
        for t in threads:
            t.start()
        try:
            if not self._started.wait(accept_timeout):
                raise SctpbondError(f"no peer connected within {accept_timeout:g} s")
            assert self.runner is not None
            self.runner.run()
            return self.runner.stats()
        finally:
            self._stop.set()
            for t in threads:
                t.join(1.0)
            for lst in self.listeners:
                lst.close()

"""The dialling end: open the first path (NEW session), join the others, re-dial paths that fail."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .. import transport as transports
from ..errors import AuthError, ConnectError, SctpbondError, SessionAborted, TransportError, UsageError
from ..proto.frames import NONCE_SIZE, TOKEN_SIZE, Abort, AbortCode, HelloKind, decode, encode
from ..proto.handshake import ClientHandshake, Negotiated
from ..proto.session import Session
from ..transport.base import Channel
from .options import Options
from .runner import LOG, SessionRunner


@dataclass(frozen=True)
class PathSpec:
    """One path: a remote address, optionally pinned to a local address."""

    remote: tuple[str, int]
    local: str | None = None

    def __str__(self) -> str:
        return (f"{self.local}=" if self.local else "") + f"{self.remote[0]}:{self.remote[1]}"


def handshake(channel: Channel, hs: ClientHandshake, timeout: float) -> Negotiated:
    """Run the client side of the handshake on a fresh channel (blocking, bounded by `timeout`)."""
    channel.set_timeout(timeout)
    try:
        channel.send((encode(hs.start()),))
        while hs.result is None:
            buf = channel.recv()
            if buf is None:
                raise ConnectError(f"{channel.label} closed the connection during the handshake "
                                   "(not an sctpbond listener, or it refused us)")
            try:
                reply = hs.receive(decode(buf))
            except AuthError as exc:
                channel.send((encode(Abort(AbortCode.AUTH, str(exc))),))
                raise
            if reply is not None:
                channel.send((encode(reply),))
    except TransportError as exc:
        raise ConnectError(f"handshake with {channel.label} failed: {exc}") from None
    channel.set_timeout(None)
    return hs.result


class Client:
    def __init__(self, paths: Sequence[PathSpec], *, transport: str = "auto", multiplier: int = 1,
                 options: Options = Options(), source_fd: int | None = 0, sink_fd: int | None = 1,
                 ) -> None:
        if not paths:
            raise UsageError("no path given: name at least one ADDR")
        if not 1 <= multiplier <= 16:
            raise UsageError("--multiplier must be between 1 and 16")
        subflows = [spec for spec in paths for _ in range(multiplier)]
        if len(subflows) > options.session.max_paths:
            raise UsageError(f"{len(subflows)} connections requested; at most {options.session.max_paths}")
        self.subflows = dict(enumerate(subflows))
        self.transport_names = transports.resolve(transport)
        self.options = options
        self.source_fd, self.sink_fd = source_fd, sink_fd
        self.transport = self.transport_names[0]
        self.token = bytes(TOKEN_SIZE)
        self.runner: SessionRunner | None = None
        self._redialing: set[int] = set()
        self._lock = threading.Lock()

    # -- dialling ---------------------------------------------------------------------------------------------------
    def _dial(self, pid: int, kind: HelloKind, transport: str) -> tuple[Channel, Negotiated]:
        spec = self.subflows[pid]
        opts = self.options
        channel = transports.load(transport).connect(spec.remote, spec.local, opts.connect_timeout)
        hs = ClientHandshake(key=opts.key, kind=kind, token=self.token, path_id=pid,
                             nonce=secrets.token_bytes(NONCE_SIZE), window=opts.session.window,
                             max_chunk=opts.session.max_chunk)
        try:
            return channel, handshake(channel, hs, opts.handshake_timeout)
        except BaseException:
            channel.abort()
            channel.close()
            raise

    def _open_first(self) -> tuple[int, Channel, Negotiated]:
        errors: list[str] = []
        for transport in self.transport_names:
            for pid, spec in self.subflows.items():
                try:
                    channel, neg = self._dial(pid, HelloKind.NEW, transport)
                except (AuthError, SessionAborted):
                    raise
                except ConnectError as exc:
                    errors.append(str(exc))
                    continue
                self.transport = transport
                return pid, channel, neg
        unique = list(dict.fromkeys(errors))
        raise ConnectError("cannot open a session: " + "; ".join(unique))

    def _join_loop(self, pid: int, first_delay: float) -> None:
        """Dial path pid until it joins or the session ends (hot add and re-join share this)."""
        backoff = self.options.redial_backoff
        attempt, delay = 0, first_delay
        runner = self.runner
        assert runner is not None
        try:
            while not runner.finished:
                if delay:
                    time.sleep(delay)
                if runner.finished:
                    return
                try:
                    channel, _ = self._dial(pid, HelloKind.JOIN, self.transport)
                except SctpbondError as exc:
                    if attempt == 0:
                        LOG.warning(f"path {pid} ({self.subflows[pid]}) not up yet: {exc}; retrying")
                    delay = backoff[min(attempt, len(backoff) - 1)]
                    attempt += 1
                    continue
                rejoin = pid in runner.session.paths
                if rejoin or attempt:
                    how = "re-joined" if rejoin else "joined"
                    LOG.warning(f"path {pid} ({self.subflows[pid]}) {how} after {attempt} retries")
                runner.attach(pid, channel)
                return
        finally:
            with self._lock:
                self._redialing.discard(pid)

    def _start_join(self, pid: int, first_delay: float) -> None:
        with self._lock:
            if pid in self._redialing:
                return
            self._redialing.add(pid)
        threading.Thread(target=self._join_loop, args=(pid, first_delay), name=f"dial-{pid}", daemon=True).start()

    def _on_path_down(self, pid: int, reason: str) -> None:
        self._start_join(pid, self.options.redial_backoff[0])

    # -- running ----------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        pid0, channel, neg = self._open_first()
        self.token = neg.token
        session = Session(self.options.session, peer_window=neg.peer_window, peer_max_chunk=neg.peer_max_chunk,
                          now=time.monotonic())
        self.runner = SessionRunner(session, source_fd=self.source_fd, sink_fd=self.sink_fd,
                                    config=self.options.runner, on_path_down=self._on_path_down)
        LOG.info(f"session open over {self.transport} via path {pid0} ({channel.label})")
        self.runner.attach(pid0, channel)
        for pid in self.subflows:
            if pid != pid0:
                self._start_join(pid, 0.0)
        self.runner.run()
        return self.runner.stats()


def parse_path(text: str, default_port: int) -> PathSpec:
    """`ADDR`, `ADDR:PORT`, `[V6]:PORT`, or `LOCAL=REMOTE[:PORT]` (pin the path to a local address)."""
    local: str | None = None
    if "=" in text:
        local, text = text.split("=", 1)
        if not local:
            raise UsageError(f"bad path {text!r}: empty local address before '='")
    host, port = split_host_port(text, default_port)
    return PathSpec((host, port), local)


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    port_text: str | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            raise UsageError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    if not host:
        raise UsageError(f"bad address {text!r}: empty host")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"bad port in {text!r}")
    return host, int(port_text)



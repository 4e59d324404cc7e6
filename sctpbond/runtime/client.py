"""The dialling end: open the first path (NEW session), join the others, add the listener's advertised addresses
as automatic paths (sctpbond.routes), re-dial paths that fail."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .. import routes
from .. import transport as transports
from ..errors import (
    AuthError,
    ConnectError,
    ProtocolError,
    SctpbondError,
    SessionAborted,
    TransportError,
    UsageError,
)
from ..proto.frames import NONCE_SIZE, TOKEN_SIZE, Abort, AbortCode, HelloKind, encode
from ..proto.handshake import ClientHandshake, Negotiated
from ..proto.session import Session
from ..transport.base import Channel
from ..transport.sealed import secure
from .endpoints import Endpoint, StdioEndpoint
from .options import Options
from .runner import LOG, SessionRunner


@dataclass(frozen=True)
class PathSpec:
    """One path: a remote address, optionally pinned to a local address."""

    remote: tuple[str, int]
    local: str | None = None
    why: str = ""  # how the path was found (for -v); "" = given by the user
    optional: bool = False  # found automatically: dropped, not retried, if its first dial fails
    pinned: bool = False  # LOCAL=REMOTE: every packet leaves from `local` (SCTP binds it alone)
    backup: bool = False  # --backup: carries data only while no regular path can (proto/striping.py)

    def __str__(self) -> str:
        text = (f"{self.local}=" if self.local else "") + f"{self.remote[0]}:{self.remote[1]}"
        return text + (" (backup)" if self.backup else "")


def handshake(channel: Channel, hs: ClientHandshake, timeout: float) -> Negotiated:
    """Run the client side of the handshake on a fresh channel (blocking, bounded by `timeout`)."""

    def receive() -> memoryview:
        buf = channel.recv(hs.expect)
        if buf is None:
            raise ConnectError(f"{channel.label} closed the connection during the handshake "
                               "(not an sctpbond listener, or it refused us)")
        return buf

    channel.set_timeout(timeout)
    try:
        channel.send((hs.hello(),))
        channel.send((hs.receive_welcome(receive()),))
        neg = hs.receive_ready(receive())
    except ProtocolError as exc:  # garbage, a wrong key, limits: tell the listener why, unless it told us
        if not exc.from_peer:
            try:
                channel.send((encode(Abort(AbortCode(exc.abort_code), exc.peer_reason)),))
            except TransportError:
                pass
        raise
    except TransportError as exc:
        raise ConnectError(f"handshake with {channel.label} failed: {exc}") from None
    channel.set_timeout(None)
    return neg


class Client:
    def __init__(self, paths: Sequence[PathSpec], *, transport: str = "auto", multiplier: int = 1,
                 options: Options = Options(), endpoint: Endpoint | None = None, auto: bool = True) -> None:
        """`auto`: also dial the addresses the listener advertises (from the local address that routes to each)."""
        if not paths:
            raise UsageError("no path given: name at least one ADDR")
        if not 1 <= multiplier <= 16:
            raise UsageError("--multiplier must be between 1 and 16")
        self.transport_names = transports.resolve(transport)
        paths = expand_hostnames(paths)
        subflows = [spec for spec in paths for _ in range(multiplier)]
        if len(subflows) > options.session.max_paths:
            raise UsageError(f"{len(subflows)} connections requested; at most {options.session.max_paths}")
        self.subflows = dict(enumerate(subflows))
        self.multiplier, self.auto = multiplier, auto
        self.options = options
        self.endpoint = endpoint if endpoint is not None else StdioEndpoint(0, 1)
        self.transport = self.transport_names[0]
        self.token = bytes(TOKEN_SIZE)
        self.runner: SessionRunner | None = None
        self._redialing: set[int] = set()
        self._lock = threading.Lock()

    # -- dialling ---------------------------------------------------------------------------------------------------
    def _dial(self, pid: int, kind: HelloKind, transport: str) -> tuple[Channel, Negotiated]:
        spec = self.subflows[pid]
        opts = self.options
        channel = transports.load(transport).connect(spec.remote, spec.local, opts.connect_timeout, spec.pinned)
        hs = ClientHandshake(key=opts.key, kind=kind, token=self.token, path_id=pid,
                             nonce=secrets.token_bytes(NONCE_SIZE), window=opts.session.window,
                             max_chunk=opts.session.max_chunk, encrypt=opts.encrypt, backup=spec.backup,
                             redundant=opts.session.redundant)
        try:
            neg = handshake(channel, hs, opts.handshake_timeout)
            return secure(channel, neg.keys, neg.encrypt), neg
        except BaseException:
            channel.abort()
            channel.close()
            raise

    def _open_first(self) -> tuple[int, Channel, Negotiated]:
        errors: list[str] = []
        for transport in self.transport_names:
            # Regular paths first: a session opened on a backup would put the first data on the metered link.
            for pid in sorted(self.subflows, key=lambda p: self.subflows[p].backup):
                try:
                    channel, neg = self._dial(pid, HelloKind.NEW, transport)
                except (AuthError, SessionAborted, ProtocolError):
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
                    spec = self.subflows[pid]
                    if spec.optional and attempt == 0 and pid not in runner.session.paths:
                        LOG.info(f"path {pid} ({spec}) dropped: {exc}")
                        return
                    if attempt == 0:
                        LOG.warning(f"path {pid} ({self.subflows[pid]}) not up yet: {exc}; retrying")
                    delay = backoff[min(attempt, len(backoff) - 1)]
                    attempt += 1
                    continue
                rejoin = pid in runner.session.paths
                if rejoin or attempt:
                    how = "re-joined" if rejoin else "joined"
                    LOG.warning(f"path {pid} ({self.subflows[pid]}) {how} after {attempt} retries")
                with self._lock:  # before attach: a failure of the new connection must be able to re-dial it
                    self._redialing.discard(pid)
                runner.attach(pid, channel, self.subflows[pid].backup)
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
        """start(), then wait()."""
        self.start()
        return self.wait()

    def wait(self) -> dict:
        """Until both directions are complete (their stats) or the session failed (raises why)."""
        assert self.runner is not None, "start() first"
        self.runner.run()
        return self.runner.stats()

    def start(self) -> None:
        """Open the session on its first path (raises if none can be), start the others and the data; returns
        once data flows."""
        self._preload_routes()
        pid0, channel, neg = self._open_first()
        self.token = neg.token
        session = Session(self.options.session, peer_window=neg.peer_window, peer_max_chunk=neg.peer_max_chunk,
                          now=time.monotonic())
        self.runner = SessionRunner(session, endpoint=self.endpoint, config=self.options.runner,
                                    on_path_down=self._on_path_down)
        LOG.info(f"session open over {self.transport} via path {pid0} ({channel.label})")
        self.runner.attach(pid0, channel, self.subflows[pid0].backup)
        for pid, spec in self.subflows.items():
            local = channel.local[0] if pid == pid0 else spec.local
            role = " backup" if spec.backup else ""
            LOG.info(f"path {pid}{role} {local or 'any'} -> {spec.remote[0]} "
                     f"({spec.why or 'given on the command line'})")
            if pid != pid0:
                self._start_join(pid, 0.0)
        if self.auto:
            # Route lookups need pyroute2 (slow to import): off the data path, which already runs on path pid0.
            threading.Thread(target=self._add_advertised, args=(neg.peer_addresses, self.subflows[pid0].remote[1]),
                             name="auto-paths", daemon=True).start()
        self.runner.start()

    # -- automatic paths ----------------------------------------------------------------------------------------------
    def _preload_routes(self) -> None:
        """Start importing pyroute2 now if automatic paths are likely: one address given for the listener
        (`connect HOST`). With several, they usually are all its addresses and nothing is left to look up; a
        listener reached over loopback advertises nothing else."""
        remotes = {routes.normalize(s.remote[0]) for s in self.subflows.values()}
        if self.auto and len(remotes) == 1 and not routes.is_loopback(remotes.pop()):
            routes.preload()

    def _add_advertised(self, advertised: tuple[str, ...], port: int) -> None:
        try:
            self._plan_advertised(advertised, port)
        except Exception as exc:  # noqa: BLE001 -- a bonus: the session goes on with the paths it has
            LOG.warning(f"no automatic paths: {type(exc).__name__}: {exc}")

    def _plan_advertised(self, advertised: tuple[str, ...], port: int) -> None:
        if not advertised:
            LOG.info("automatic paths: the listener advertised no addresses")
            return
        with self._lock:
            in_use = {routes.normalize(s.remote[0]): pid for pid, s in reversed(self.subflows.items())}
            count = len(self.subflows)
        fresh = [a for a in dict.fromkeys(routes.normalize(a) for a in advertised) if a not in in_use]
        found = routes.lookup_routes(fresh) if fresh else {}
        room = (self.options.session.max_paths - count) // self.multiplier
        dropped = []
        for choice in routes.plan_extra_paths(advertised, in_use, found, room):
            if choice.over_limit:
                dropped.append(choice.remote)
            if not choice.take:
                LOG.info(f"skipped {choice.remote}: {choice.why}")
                continue
            spec = PathSpec((choice.remote, port), choice.local, choice.why, optional=True)
            with self._lock:
                runner = self.runner
                if runner is None or runner.finished:
                    return
                first = max(self.subflows) + 1
                for k in range(self.multiplier):
                    self.subflows[first + k] = spec
            for k in range(self.multiplier):
                LOG.info(f"path {first + k} {choice.local} -> {choice.remote} ({choice.why})")
                self._start_join(first + k, 0.0)
        if dropped:
            LOG.warning(f"{len(dropped)} advertised address{'es' if len(dropped) > 1 else ''} not used "
                        f"({', '.join(dropped)}): a session has at most {self.options.session.max_paths} "
                        f"connections (--multiplier {self.multiplier})")


def expand_hostnames(paths: Sequence[PathSpec]) -> list[PathSpec]:
    """A hostname stands for all its addresses (getaddrinfo), one path each; when it has several, each is
    optional (dropped if it cannot be reached, as a browser tries each address of a name)."""
    family = socket.AF_UNSPEC
    out: list[PathSpec] = []
    for spec in paths:
        host, port = spec.remote
        if routes.is_ip(host):
            out.append(spec)
            continue
        addrs = routes.resolve(host, port, family)
        for i, addr in enumerate(addrs):
            why = f"{host} resolves to it" + (f", address {i + 1} of {len(addrs)}" if len(addrs) > 1 else "")
            out.append(PathSpec((addr, port), spec.local, why, optional=len(addrs) > 1, pinned=spec.pinned,
                                backup=spec.backup))
    return out


def parse_path(text: str, default_port: int, backup: bool = False) -> PathSpec:
    """`ADDR`, `ADDR:PORT`, `[V6]:PORT`, or `LOCAL=REMOTE[:PORT]` (pin the path to a local address)."""
    local: str | None = None
    if "=" in text:
        local, text = text.split("=", 1)
        if not local:
            raise UsageError(f"bad path {text!r}: empty local address before '='")
    host, port = split_host_port(text, default_port)
    return PathSpec((host, port), local, pinned=local is not None, backup=backup)


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



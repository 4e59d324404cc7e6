"""Public Python API: one duplex byte stream over several paths, as a context manager.

    import sctpbond

    KEY = open("key", "rb").read().strip()  # at least 16 bytes: sctpbond keygen key
    with sctpbond.connect(["10.0.1.2", "10.0.2.2"], key=KEY) as stream:
        stream.write(b"hello")
        stream.close_write()            # our direction is complete (FIN)
        reply = stream.read()           # everything the listener sends back, until its FIN
    print(stream.stats["send_mbit_s"])

    with sctpbond.listen(port=7300, key=KEY) as stream:   # waits for one session
        data = stream.read()
        stream.write(data.upper())

The session runs in the runtime's threads (the same runtime as the command line); the stream object is the
session's in-process Endpoint, with bounded queues both ways (no pipes, no thread of its own). Leaving the
`with` block closes our direction, discards whatever the peer still sends that was not read, waits for both
directions to be acknowledged, and raises the session's error if it failed (a subclass of
`sctpbond.SctpbondError`). `stream.stats` then holds what `--stats-json` would write.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import transport as transports
from .errors import SctpbondError, UsageError
from .runtime.endpoints import Endpoint
from .runtime.options import DEFAULT_PORT, Options, make_options

if TYPE_CHECKING:
    from .runtime.client import PathSpec

MiB = 1 << 20


class _StreamEndpoint(Endpoint):
    """The session's application side, in process: what the application writes waits in `_to_peer` for the
    runner's input pump, what the peer sent waits in `_from_peer` for the application's reads. Each holds at most
    `cap` bytes, and a full one blocks its writer, as a pipe would: memory stays bounded whoever is slow."""

    label = "the Python API"
    join_timeout = 5.0

    def __init__(self, cap: int = 4 * MiB) -> None:
        self.cap = cap
        self._cond = threading.Condition()
        self._to_peer: deque[bytes] = deque()
        self._from_peer: deque[bytes] = deque()
        self._queued = {"to": 0, "from": 0}
        self._to_peer_eof = self._from_peer_eof = False
        self.ended = False  # the session is over (success or not): nothing more moves
        self.error: BaseException | None = None

    # -- the runner's side -------------------------------------------------------------------------------------
    @property
    def sends(self) -> bool:
        return True

    def read(self, n: int) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: self._to_peer or self._to_peer_eof or self.ended)
            return self._take(self._to_peer, "to", n)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._queued["from"] < self.cap or self.ended)
            if self.ended:
                return
            self._from_peer.append(bytes(data))
            self._queued["from"] += len(data)
            self._cond.notify_all()

    def recv_done(self) -> None:
        with self._cond:
            self._from_peer_eof = True
            self._cond.notify_all()

    def stop(self) -> None:
        self.end(None)

    def session_failed(self, error: BaseException) -> None:
        self.end(error)

    def end(self, error: BaseException | None) -> None:
        with self._cond:
            self.ended, self._from_peer_eof = True, True
            self.error = self.error or error
            self._cond.notify_all()

    # -- the application's side --------------------------------------------------------------------------------
    def put(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            with self._cond:
                self._cond.wait_for(lambda: self._queued["to"] < self.cap or self.ended)
                if self.ended:
                    raise self.error or SctpbondError("the session ended before all data was written")
                piece = bytes(view[: self.cap])
                self._to_peer.append(piece)
                self._queued["to"] += len(piece)
                self._cond.notify_all()
            view = view[len(piece):]

    def close_put(self) -> None:
        with self._cond:
            self._to_peer_eof = True
            self._cond.notify_all()

    def get(self, n: int) -> bytes:
        """Up to n bytes the peer sent (n < 0: any amount available); b"" at its end."""
        with self._cond:
            self._cond.wait_for(lambda: self._from_peer or self._from_peer_eof)
            return self._take(self._from_peer, "from", n)

    def _take(self, queue: deque[bytes], side: str, n: int) -> bytes:
        """Condition held: up to n bytes from `queue` (n < 0: its next block), b"" if it is empty."""
        if not queue:
            return b""
        block = queue.popleft()
        if 0 <= n < len(block):
            block, rest = block[:n], block[n:]
            queue.appendleft(rest)
        self._queued[side] -= len(block)
        self._cond.notify_all()
        return block


class Stream:
    """The application's side of a session: write()/close_write() what goes to the peer, read() what it sent.
    The session runs in the runtime's own threads; there is no pipe and no extra thread here."""

    def __init__(self, wait: Callable[[], dict]) -> None:
        self._endpoint = _StreamEndpoint()
        self._wait = wait
        self._closed = False
        self._result: dict | None = None
        self.error: BaseException | None = None
        self.stats: dict = {}

    # -- the application's side ----------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of `data` (blocks while the session's window is full)."""
        if self._closed:
            raise UsageError("write after close_write()")
        self._endpoint.put(data)

    def close_write(self) -> None:
        """No more data from us: the peer reads end of stream once it has everything."""
        self._closed = True
        self._endpoint.close_put()

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes (n < 0: everything until the peer's end of stream). b"" means the peer's stream ended
        (check `wait()` to know whether it ended well)."""
        if n >= 0:
            return self._endpoint.get(n)
        return b"".join(iter(lambda: self._endpoint.get(-1), b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self._endpoint.get(-1), b"")

    def wait(self) -> dict:
        """Wait for the session to end; its stats, or raise why it failed."""
        if self._result is None and self.error is None:
            try:
                self._result = self.stats = self._wait()
            except BaseException as exc:
                self.error = exc
            finally:
                self._endpoint.end(self.error)
        if self.error is not None:
            raise self.error
        assert self._result is not None
        return self._result

    def _finish(self) -> None:
        self.close_write()
        for _ in self:  # drain what was not read: the session must be able to deliver its end
            pass
        self.wait()


def options(*, key: bytes | str | None = None, encrypt: bool = True, window: int = 64 * MiB,
            chunk: int = MiB, dead_after: float = 1.0, path_timeout: float = 30.0,
            limit_rate: float | None = None) -> Options:
    """Session settings, as the command line's options (sizes in bytes, rate in bytes/s)."""
    return make_options(window=window, chunk=chunk, dead_after=dead_after, path_timeout=path_timeout,
                        limit_rate=limit_rate, key=key.encode() if isinstance(key, str) else key, encrypt=encrypt)


@contextmanager
def connect(addresses: Sequence[str | tuple[str, int]], *, port: int = DEFAULT_PORT, transport: str = "auto",
            multiplier: int = 1, auto: bool = True, backup: Sequence[str | tuple[str, int]] = (),
            redundant: bool = False, **settings: object) -> Iterator[Stream]:
    """Open a session over one path per address ("10.0.1.2", ("10.0.2.2", 7301) or "LOCAL=REMOTE"); with
    `auto`, also over the addresses the listener advertises (from the local address that routes to each).
    `backup`: paths that carry the stream only while no other can (as --backup); `redundant`: every chunk on two
    paths (as --redundant). Raises at once if no path can be opened."""
    from dataclasses import replace

    from .runtime.client import Client, parse_path

    def spec(a: str | tuple[str, int], is_backup: bool) -> PathSpec:
        return parse_path(a if isinstance(a, str) else f"{a[0]}:{a[1]}", port, is_backup)

    paths = [spec(a, False) for a in addresses] + [spec(a, True) for a in backup]
    if paths and all(p.backup for p in paths):
        raise UsageError("only backup paths given: name at least one regular address")
    opts = options(**settings)  # type: ignore[arg-type]
    opts = replace(opts, session=replace(opts.session, redundant=redundant))
    client: Client | None = None
    stream = Stream(lambda: client.wait() if client is not None else {})
    client = Client(paths, transport=transport, multiplier=multiplier, options=opts, endpoint=stream._endpoint,
                    auto=auto)
    client.start()
    yield from _serve(stream)


@contextmanager
def listen(port: int = DEFAULT_PORT, *, bind: Sequence[str] = ("0.0.0.0",), transport: str = "auto",
           accept_timeout: float | None = None, **settings: object) -> Iterator[Stream]:
    """Wait for one session on `port` (every address in `bind`). The `with` body starts at once: reads block
    until the peer has connected and sent something (or accept_timeout passed: the block then raises)."""
    from .runtime.server import Server

    opts = options(**settings)  # type: ignore[arg-type]
    listeners = transports.make_listeners(transports.resolve(transport), list(bind), port)
    server: Server | None = None
    stream = Stream(lambda: server.wait() if server is not None else {})
    server = Server(listeners, options=opts, endpoints=lambda info: stream._endpoint)
    server.on_no_session = lambda: stream._endpoint.end(None)  # a reader waiting for a peer wakes up
    server.start(accept_timeout)
    yield from _serve(stream)


def _serve(stream: Stream) -> Iterator[Stream]:
    """The `with` body, then the end: close our direction, drain, wait for both to be acknowledged."""
    try:
        yield stream
    finally:
        stream._finish()

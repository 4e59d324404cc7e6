"""Public Python API: one duplex byte stream over several paths, as a context manager.

    import sctpbond

    KEY = open("key", "rb").read().strip()  # at least 16 bytes: head -c 32 /dev/urandom | base64 > key
    with sctpbond.connect(["10.0.1.2", "10.0.2.2"], key=KEY) as stream:
        stream.write(b"hello")
        stream.close_write()            # our direction is complete (FIN)
        reply = stream.read()           # everything the listener sends back, until its FIN
    print(stream.stats["send_mbit_s"])

    with sctpbond.listen(port=7300, key=KEY) as stream:   # waits for one session
        data = stream.read()
        stream.write(data.upper())

The session runs in background threads (the same runtime as the command line); the stream object moves bytes in
and out through two pipes. Leaving the `with` block closes our direction, discards whatever the peer still sends
that was not read, waits for both directions to be acknowledged, and raises the session's error if it failed
(a subclass of `sctpbond.SctpbondError`). `stream.stats` then holds what `--stats-json` would write.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from . import transport as transports
from .errors import SctpbondError, UsageError
from .runtime.endpoints import Endpoint, grow_pipe
from .runtime.options import DEFAULT_PORT, Options, make_options

MiB = 1 << 20


class _PipeEndpoint(Endpoint):
    """The listener's one session on the Stream's pipes."""

    def __init__(self, source: int, sink: int, recv_done: Callable[[], None]) -> None:
        self.source_fd, self.sink_fd, self._recv_done = source, sink, recv_done
        self.label = "the Python API"

    def recv_done(self) -> None:
        self._recv_done()


class Stream:
    """The application's side of a session: write()/close_write() what goes to the peer, read() what it sent."""

    def __init__(self) -> None:
        self._to_session_r, self._to_session_w = os.pipe()  # our writes -> the session's input pump
        self._from_session_r, sink = os.pipe()  # the session's output pump -> our reads
        self._from_session_w: int | None = sink
        self._write_fd: int | None = self._to_session_w
        os.set_blocking(self._to_session_w, False)
        for fd in (self._to_session_w, sink):
            grow_pipe(fd)  # fewer, larger reads for the pumps
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.stats: dict = {}

    # -- the application's side ----------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of `data` (blocks while the session's window is full)."""
        if self._write_fd is None:
            raise UsageError("write after close_write()")
        view = memoryview(data).cast("B")
        while view:
            try:
                view = view[os.write(self._write_fd, view):]  # non-blocking: as much as the pipe takes
                continue
            except BlockingIOError:
                pass
            # Wait for room, but not for ever: the session may have ended (the pipe then never drains).
            select.select([], [self._write_fd], [], 0.2)
            if self._ended.is_set():
                self._raise_failure("the session ended before all data was written")

    def close_write(self) -> None:
        """No more data from us: the peer reads end of stream once it has everything."""
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes (n < 0: everything until the peer's end of stream). b"" means the peer's stream ended
        (check `wait()` to know whether it ended well)."""
        if n >= 0:
            return os.read(self._from_session_r, n)
        parts = []
        while block := os.read(self._from_session_r, 1 << 20):
            parts.append(block)
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        while block := os.read(self._from_session_r, 1 << 20):
            yield block

    def wait(self, timeout: float | None = None) -> dict:
        """Wait for the session to end; its stats, or raise why it failed."""
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the session is still running")
        if self.error is not None:
            raise self.error
        return self.stats

    # -- plumbing --------------------------------------------------------------------------------------------------
    def _raise_failure(self, what: str) -> None:
        if self.error is not None:
            raise self.error
        raise SctpbondError(what)

    def _recv_done(self) -> None:
        """The peer's whole stream is in the pipe: our reader sees its end (the session may go on sending)."""
        with self._lock:
            if self._from_session_w is not None:
                os.close(self._from_session_w)
                self._from_session_w = None

    def _start(self, run: Callable[[int, int, Callable[[], None]], dict]) -> None:
        sink = self._from_session_w
        assert sink is not None

        def target() -> None:
            try:
                self.stats = run(self._to_session_r, sink, self._recv_done)
            except BaseException as exc:  # handed to the application by wait() / the with block
                self.error = exc
            finally:
                self._recv_done()  # on failure too: a reader must not wait for ever
                self._ended.set()

        self._thread = threading.Thread(target=target, name="sctpbond-session", daemon=True)
        self._thread.start()

    def _finish(self) -> None:
        self.close_write()
        for _ in self:  # drain what was not read: the session must be able to deliver its end
            pass
        try:
            self.wait()
        finally:
            os.close(self._to_session_r)
            os.close(self._from_session_r)


def options(*, key: bytes | str | None = None, encrypt: bool = True, window: int = 64 * MiB,
            chunk: int = MiB, dead_after: float = 1.0, path_timeout: float = 30.0,
            limit_rate: float | None = None) -> Options:
    """Session settings, as the command line's options (sizes in bytes, rate in bytes/s)."""
    return make_options(window=window, chunk=chunk, dead_after=dead_after, path_timeout=path_timeout,
                        limit_rate=limit_rate, key=key.encode() if isinstance(key, str) else key, encrypt=encrypt)


@contextmanager
def connect(addresses: Sequence[str | tuple[str, int]], *, port: int = DEFAULT_PORT, transport: str = "auto",
            multiplier: int = 1, auto: bool = True, **settings: object) -> Iterator[Stream]:
    """Open a session over one path per address ("10.0.1.2", ("10.0.2.2", 7301) or "LOCAL=REMOTE"); with
    `auto`, also over the addresses the listener advertises (from the local address that routes to each)."""
    from .runtime.client import Client, parse_path

    paths = [parse_path(a if isinstance(a, str) else f"{a[0]}:{a[1]}", port) for a in addresses]
    opts = options(**settings)  # type: ignore[arg-type]
    stream = Stream()

    def run(source: int, sink: int, recv_done: Callable[[], None]) -> dict:
        return Client(paths, transport=transport, multiplier=multiplier, options=opts, source_fd=source,
                      sink_fd=sink, auto=auto, on_recv_done=recv_done).run()

    stream._start(run)
    try:
        yield stream
    finally:
        stream._finish()


@contextmanager
def listen(port: int = DEFAULT_PORT, *, bind: Sequence[str] = ("0.0.0.0",), transport: str = "auto",
           accept_timeout: float | None = None, **settings: object) -> Iterator[Stream]:
    """Wait for one session on `port` (every address in `bind`). The `with` body starts at once: reads block
    until the peer has connected and sent something."""
    from .runtime.server import Server

    opts = options(**settings)  # type: ignore[arg-type]
    listeners = transports.make_listeners(transports.resolve(transport), list(bind), port)
    stream = Stream()

    def run(source: int, sink: int, recv_done: Callable[[], None]) -> dict:
        server = Server(listeners, options=opts, endpoints=lambda info: _PipeEndpoint(source, sink, recv_done))
        return server.run(accept_timeout) if accept_timeout is not None else server.run()

    stream._start(run)
    try:
        yield stream
    finally:
        stream._finish()

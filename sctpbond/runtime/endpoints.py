"""Where a session takes its stream from and puts it: the application side of the runtime, one Endpoint per
session (a listener makes them with a factory; connect and the Python API make theirs directly).

The default serves one session on the process's stdin/stdout, or `-o FILE`, which is opened only once a peer has
authenticated (a wrong key never creates or truncates it). With `--keep-open` sessions run side by side, so each
needs its own endpoint: a TCP service (`--relay HOST:PORT`, e.g. sshd), a command (`--exec CMD`), or a file
named by a pattern (`-o 'recv-{n}.img'`).

The runner's pumps call `read(n)` (what goes to the peer; b"" is its end) and `write(data)` (what the peer sent);
by default they use the descriptors `source_fd` and `sink_fd`, and an in-process stream (the Python API's)
overrides them. The runner calls
`recv_done()` once everything the peer sent is written (pass the EOF on), `stop()` when the session failed (wake
any thread still blocked on the fds), then `close(idle)`; `idle` is False when a pump thread might still use a
descriptor, and the descriptor is then left open rather than risk another session reusing its number.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import stat
import string
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConnectError, UsageError

LOG = logging.getLogger("sctpbond")

PATTERN_FIELDS = ("n", "peer", "time")


def grow_pipe(fd: int) -> None:
    """A 64 KiB pipe makes many small reads; ask for 1 MiB (best effort, Linux only; other files untouched)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass


@dataclass(frozen=True)
class SessionInfo:
    number: int  # 1, 2, ... in the order sessions were authenticated on this listener
    peer: tuple[str, int]  # address of the connection that opened the session


class Endpoint:
    """One session's application side. Subclasses set the descriptors and override what they need."""

    label = ""  # for log lines: "relay to 127.0.0.1:22"
    join_timeout = 5.0  # after a failure: how long the pump threads may take to let go of the descriptors
    source_fd: int | None = None
    sink_fd: int | None = None

    @property
    def sends(self) -> bool:
        """Whether this side has a stream to send (False: -N, it sends an empty one)."""
        return self.source_fd is not None

    def read(self, n: int) -> bytes:
        """Up to n bytes for the peer; b"" at the end of the stream (blocks until some are there)."""
        return os.read(self.source_fd, n) if self.source_fd is not None else b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """All of `data`, in stream order (blocks while the application is not taking it)."""
        if self.sink_fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self.sink_fd, view):]

    def recv_done(self) -> None:
        """Everything the peer sent is written to sink_fd: pass the end of stream on."""

    def session_failed(self, error: BaseException) -> None:
        """The session failed (called by the runner as soon as it knows): an in-process reader stops waiting."""

    def stop(self) -> None:
        """The session failed: unblock any thread still reading source_fd or writing sink_fd."""

    def close(self, idle: bool) -> None:
        """The session is over: release descriptors (only if `idle`) and processes."""


EndpointFactory = Callable[[SessionInfo], Endpoint]


# -- one session on the process's own descriptors ----------------------------------------------------------------
class StdioEndpoint(Endpoint):
    """Descriptors the caller owns and closes (stdin/stdout, `connect -i FILE`)."""

    join_timeout = 0.0  # nothing is closed here that a pump could still use

    def __init__(self, source_fd: int | None, sink_fd: int | None) -> None:
        self.source_fd, self.sink_fd = source_fd, sink_fd


def stdio(source_fd: int | None, sink_fd: int | None) -> EndpointFactory:
    return lambda info: StdioEndpoint(source_fd, sink_fd)


class FileEndpoint(Endpoint):
    join_timeout = 2.0  # the output pump may be finishing a write

    def __init__(self, path: str, source_fd: int | None) -> None:
        self.label = f"to {path}"
        self.source_fd = source_fd
        try:
            self.sink_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot open output {path}: {exc.strerror}") from None

    def close(self, idle: bool) -> None:
        if idle and self.sink_fd is not None:
            os.close(self.sink_fd)
            self.sink_fd = None


def check_writable(path: str) -> None:
    """Fail early on an output file that could not be opened, without creating or truncating it."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"cannot open output {path}: it is a directory")
    if not os.path.isdir(parent):
        raise UsageError(f"cannot open output {path}: no directory {parent}")
    target = path if os.path.exists(path) else parent
    if not os.access(target, os.W_OK):
        raise UsageError(f"cannot open output {path}: permission denied")


def output_file(path: str, source_fd: int | None) -> EndpointFactory:
    """One session into FILE, created (or truncated) only once the peer has authenticated."""
    check_writable(path)
    return lambda info: FileEndpoint(path, source_fd)


def check_pattern(pattern: str) -> None:
    """A per-session file name must contain {n} (unique per session); {peer} and {time} are optional."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as exc:
        raise UsageError(f"bad -o pattern {pattern!r}: {exc}") from None
    unknown = [n for n in names if n not in PATTERN_FIELDS]
    if unknown:
        raise UsageError(f"bad -o pattern {pattern!r}: unknown field {{{unknown[0]}}} (use {{n}}, {{peer}}, {{time}})")
    if "n" not in names:
        raise UsageError(f"-o {pattern!r} with --keep-open needs {{n}} in the name (one file per session), "
                         "e.g. -o 'recv-{n}.img'")
    check_writable(expand(pattern, SessionInfo(1, ("0.0.0.0", 0))))


def expand(pattern: str, info: SessionInfo) -> str:
    return pattern.format(n=info.number, peer=info.peer[0], time=time.strftime("%Y%m%d-%H%M%S"))


def output_pattern(pattern: str) -> EndpointFactory:
    """Each session into its own file (`{n}`: session number, `{peer}`: its address, `{time}`); nothing is
    sent back."""
    check_pattern(pattern)
    return lambda info: FileEndpoint(expand(pattern, info), None)


# -- a TCP service per session --------------------------------------------------------------------------------------
class RelayEndpoint(Endpoint):
    """The stream goes to a TCP connection and what the service answers goes back; both descriptors are the
    socket (the runner uses os.read/os.write on it)."""

    def __init__(self, sock: socket.socket, target: str) -> None:
        self.sock = sock
        self.label = f"relay to {target}"
        self.source_fd = self.sink_fd = sock.fileno()

    def recv_done(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)  # the service reads EOF; its answer can still come back
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read (EOF) and write (EPIPE)
        except OSError:
            pass

    def close(self, idle: bool) -> None:
        if idle:
            self.sock.close()


def relay(host: str, port: int, timeout: float = 3.0) -> EndpointFactory:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def make(info: SessionInfo) -> Endpoint:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise ConnectError(f"cannot reach relay target {target}: no answer within {timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(f"cannot reach relay target {target}: {exc.strerror or exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # interactive use (ssh) wants no delay
        LOG.info(f"session {info.number}: connected to {target}")
        return RelayEndpoint(sock, target)

    return make


# -- a command per session ------------------------------------------------------------------------------------------
class ExecEndpoint(Endpoint):
    """The stream is the command's stdin, its stdout goes back; its stderr is the listener's."""

    def __init__(self, proc: subprocess.Popen, command: str, number: int) -> None:
        self.proc, self.number = proc, number
        self.label = f"exec {command!r} (pid {proc.pid})"
        assert proc.stdin is not None and proc.stdout is not None
        self.source_fd, self.sink_fd = proc.stdout.fileno(), proc.stdin.fileno()
        self.failed = False

    def recv_done(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the command reads EOF
        self.sink_fd = None

    def stop(self) -> None:
        self.failed = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def close(self, idle: bool) -> None:
        if idle:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        rc = self.proc.wait()
        if rc != 0 and not (self.failed and rc in (-signal.SIGTERM, -signal.SIGKILL)):
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            LOG.warning(f"session {self.number}: command {how}")


def exec_command(command: str) -> EndpointFactory:
    """Run `command` with /bin/sh per session; SCTPBOND_SESSION and SCTPBOND_PEER tell it which."""

    def make(info: SessionInfo) -> Endpoint:
        env = dict(os.environ, SCTPBOND_SESSION=str(info.number), SCTPBOND_PEER=info.peer[0])
        try:
            proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as exc:
            raise ConnectError(f"cannot run {command!r}: {exc.strerror or exc}") from None
        LOG.info(f"session {info.number}: started {command!r} (pid {proc.pid})")
        return ExecEndpoint(proc, command, info.number)

    return make

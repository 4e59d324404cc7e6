"""Settings shared by both ends of a session."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..proto.scheduler import SchedulerConfig
from ..proto.session import SessionConfig
from .runner import RunnerConfig

DEFAULT_PORT = 7300  # the listener's port, TCP and SCTP alike


@dataclass(frozen=True)
class Options:
    key: bytes | None = None  # pre-shared key; None: no authentication beyond the session token
    encrypt: bool = True  # with a key: seal frames with AES-256-GCM (a listener then refuses clients without it)
    session: SessionConfig = field(default_factory=SessionConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    redial_backoff: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)
    # Listener: the addresses WELCOME advertises for automatic paths. None: its own (its --bind addresses, or
    # every local address of the client's family when bound to the wildcard; sctpbond.routes); (): none.
    advertise: tuple[str, ...] | None = None


def make_options(*, window: int, chunk: int, dead_after: float, path_timeout: float,
                 limit_rate: float | None = None, key: bytes | None = None, encrypt: bool = True) -> Options:
    """Options from the user's settings (the command line's and the Python API's), checked."""
    if not 64 * 1024 <= chunk <= 1 << 20:
        raise UsageError("--chunk must be between 64K and 1M")
    if window < 4 * chunk:
        raise UsageError("--window must be at least 4 chunks")
    if path_timeout <= 0 or dead_after <= 0:
        raise UsageError("--path-timeout and --dead-after must be positive")
    session = SessionConfig(window=window, send_cap=window, max_chunk=chunk, dead_after=dead_after,
                            scheduler=SchedulerConfig(max_chunk=chunk, max_quota=max(chunk, window // 2)))
    runner = RunnerConfig(path_timeout=path_timeout, limit_rate=limit_rate)
    return Options(key=key, encrypt=encrypt, session=session, runner=runner)

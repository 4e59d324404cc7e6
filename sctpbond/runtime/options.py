"""Settings shared by both ends of a session."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..defaults import DEFAULT_PORT as DEFAULT_PORT  # re-exported: the listener's port
from ..errors import UsageError
from ..proto.frames import MAX_CHUNK, MAX_WINDOW, MIN_CHUNK, MIN_WINDOW_CHUNKS
from ..proto.scheduler import SchedulerConfig
from ..proto.session import SessionConfig
from .runner import RunnerConfig

#: A pre-shared key shorter than this is refused wherever it enters (--key-file, SCTPBOND_KEY, the API's key=):
#: the handshake hands a dialler's MAC to whoever answers at the address it dials, an offline check of a guess.
MIN_KEY_BYTES = 16
KEY_ADVICE = "make one with: sctpbond keygen FILE"


def check_key(key: bytes | None, where: str = "the key") -> None:
    if key is not None and len(key) < MIN_KEY_BYTES:
        raise UsageError(f"{where} has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed ({KEY_ADVICE})")


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

    def __post_init__(self) -> None:
        check_key(self.key)


def make_options(*, window: int, chunk: int, dead_after: float, path_timeout: float,
                 limit_rate: float | None = None, key: bytes | None = None, encrypt: bool = True,
                 redundant: bool = False) -> Options:
    """Options from the user's settings (the command line's and the Python API's), checked. `redundant`: the
    dialler's --redundant (a listener follows what the dialler's HELLO asks)."""
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise UsageError("--chunk must be between 64K and 1M")
    if not MIN_WINDOW_CHUNKS * chunk <= window <= MAX_WINDOW:
        raise UsageError(f"--window must be at least {MIN_WINDOW_CHUNKS} chunks and at most 4G")
    if path_timeout <= 0 or dead_after <= 0:
        raise UsageError("--path-timeout and --dead-after must be positive")
    session = SessionConfig(window=window, send_cap=window, max_chunk=chunk, dead_after=dead_after,
                            path_timeout=path_timeout, redundant=redundant,
                            scheduler=SchedulerConfig(max_quota=max(chunk, window // 2)))  # its chunk: the session's
    runner = RunnerConfig(limit_rate=limit_rate)
    return Options(key=key, encrypt=encrypt, session=session, runner=runner)

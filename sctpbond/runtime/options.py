"""Settings shared by both ends of a session."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..proto.session import SessionConfig
from .runner import RunnerConfig


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

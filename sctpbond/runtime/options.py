"""Settings shared by both ends of a session."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..proto.session import SessionConfig
from .runner import RunnerConfig


@dataclass(frozen=True)
class Options:
    key: bytes | None = None  # pre-shared key; None: no authentication beyond the session token
    session: SessionConfig = field(default_factory=SessionConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    redial_backoff: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)

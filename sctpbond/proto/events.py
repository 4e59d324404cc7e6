"""What the session tells its driver, in the past tense (as h11's and aioquic's events do): the runtime pulls them
with `Session.next_event()` after each call and acts (closes a socket, re-dials, logs, ends), deciding nothing
about the protocol itself. The hot path's wake-ups stay in `Wake` flags (measured: an event per frame costs)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SctpbondError


@dataclass(frozen=True, slots=True)
class PathJoined:
    path_id: int
    label: str
    rejoined: bool  # it had joined before and failed


@dataclass(frozen=True, slots=True)
class PathStale:
    """Silent with data outstanding: its unacknowledged chunks went back to be sent on the others."""

    path_id: int
    silent_s: float
    requeued: int  # bytes put back to be resent elsewhere


@dataclass(frozen=True, slots=True)
class PathFailed:
    """The path is gone (closed, reset, silent for too long, or a frame on it failed authentication): its
    connection is to be closed, and a dialler re-dials it."""

    path_id: int
    reason: str
    requeued: int  # bytes put back to be resent elsewhere
    peer_closed: bool  # the peer closed or reset it (not: it went silent)


@dataclass(frozen=True, slots=True)
class AllPathsDown:
    """No path is alive: the session waits up to `timeout_s` for one to come back."""

    timeout_s: float


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer's whole stream was handed to the application (and its digest checked)."""

    total: int


@dataclass(frozen=True, slots=True)
class SessionTerminated:
    """The session is over: `error` is None when both directions completed, else why it failed."""

    error: SctpbondError | None


Event = PathJoined | PathStale | PathFailed | AllPathsDown | StreamEnded | SessionTerminated

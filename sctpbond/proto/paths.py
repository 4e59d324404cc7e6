"""One path's state and its heartbeat decisions: when to ping, when a silent path turns stale, when it is dead.

The scheduler reads and updates the rate fields (scheduler.py); the session asks `silence(now)` and `ping_due(now)`
from its timer, and `deadline()` for the next moment either can change (`Session.get_timer`). Time is always an
argument; nothing here blocks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heartbeat:
    """The timing rules of every path (the session's config, docs/wire-format.md PING/PONG)."""

    ping_interval: float = 0.2  # ping after this long without sending anything else
    rtt_probe_interval: float = 1.0  # ... and at least this often, for fresh RTTs
    stale_after: float = 0.4  # silent this long with data outstanding: stale (its chunks are sent again)
    dead_after: float = 1.0  # silent this long: dead


class Silence(enum.Enum):
    NONE = 0
    STALE = 1  # newly stale
    DEAD = 2


@dataclass
class PathState:
    id: int
    label: str = ""
    alive: bool = True
    stale: bool = False  # silent for a while with data outstanding: no new data until it is heard again
    backup: bool = False  # carries data only while no regular path is alive and not stale (proto/striping.py)
    sent: int = 0  # payload bytes put on this path (resends included)
    peer_received: int = 0  # payload bytes the peer says arrived on this path
    received: int = 0  # payload bytes that arrived here on this path
    chunks_sent: int = 0
    chunks_received: int = 0
    resent_chunks: int = 0  # chunks this path carried for another (dead or slow) path
    stale_events: int = 0  # times it went silent with data outstanding (its chunks were sent again elsewhere)
    stale_at: float | None = None  # when it last turned stale
    rate: float = 0.0  # delivery rate estimate, bytes/s
    min_rtt: float | None = None  # PING round trips: they wait behind our queued data, so they include it
    srtt: float | None = None
    net_rtt: float | None = None  # the transport's own RTT (SCTP srtt, TCP_INFO): the network, not our queue
    max_chunk: int | None = None  # the largest payload its transport takes in one frame (None: any the session does)
    last_heard: float = 0.0  # when any frame last arrived on this path
    last_sent: float = 0.0  # when we last put a frame on this path
    last_ping: float = 0.0  # when we last queued a PING on it
    up_since: float = 0.0
    down_at: float | None = None
    down_reason: str = ""
    _sample_t: float = field(default=0.0, repr=False)  # the scheduler's rate sample (scheduler.py)
    _sample_rx: int = field(default=0, repr=False)

    @property
    def in_service(self) -> bool:
        """Alive and heard from lately: it may take data (stale: silent with data outstanding)."""
        return self.alive and not self.stale

    @property
    def in_flight(self) -> int:
        return self.sent - self.peer_received

    def start(self, now: float, rejoin: bool) -> None:
        """A connection finished its handshake for this path (first time, or a re-join): counters restart with
        the new connection on both sides; the RTT and rate history of the old one no longer applies."""
        if rejoin:
            self.sent = self.peer_received = self.received = 0
            self.rate = 0.0
            self.net_rtt = None
            self._sample_t = 0.0
        self.alive, self.stale = True, False
        self.last_heard = self.last_sent = self.last_ping = self.up_since = now
        self.down_at = None

    def stop(self, reason: str, now: float) -> None:
        self.alive, self.down_at, self.down_reason = False, now, reason

    def heard(self) -> bool:
        """A frame arrived (the caller sets last_heard): True if that ended a stale spell."""
        if self.stale:
            self.stale = False
            return True
        return False

    # A path whose heartbeats queue behind its data (a slow link, a busy CPU) has a long RTT: it gets time in
    # proportion before it is called stale or dead. On a normal path the configured times apply.
    def _dead_after(self, hb: Heartbeat) -> float:
        return max(hb.dead_after, 6 * (self.srtt or 0.0))

    def _stale_after(self, hb: Heartbeat) -> float:
        return max(hb.stale_after, 3 * (self.srtt or 0.0))

    def silence(self, now: float, hb: Heartbeat) -> Silence:
        """What the path's silence means now (a newly stale path is marked stale here)."""
        silent = now - self.last_heard
        if silent > self._dead_after(hb):
            return Silence.DEAD
        if silent > self._stale_after(hb) and not self.stale and self.in_flight > 0:
            self.stale, self.stale_at = True, now
            self.stale_events += 1
            return Silence.STALE
        return Silence.NONE

    def ping_due(self, now: float, hb: Heartbeat) -> bool:
        """A PING goes out after ping_interval of sending nothing else (the peer's silence detection must hear
        from us), and at least every rtt_probe_interval (fresh RTTs)."""
        since_ping = now - self.last_ping
        quiet = now - self.last_sent >= hb.ping_interval
        if since_ping >= hb.ping_interval and (quiet or since_ping >= hb.rtt_probe_interval):
            self.last_ping = now
            return True
        return False

    def deadline(self, hb: Heartbeat) -> float:
        """The next moment one of the above can change its answer (with no frame arriving meanwhile)."""
        ping = self.last_ping + hb.ping_interval
        if self.last_sent + hb.ping_interval > ping:  # busy sending: the probe interval, or when it goes quiet
            ping = min(self.last_ping + hb.rtt_probe_interval, self.last_sent + hb.ping_interval)
        silence = self.last_heard + self._dead_after(hb)
        if not self.stale and self.in_flight > 0:
            silence = min(silence, self.last_heard + self._stale_after(hb))
        return min(ping, silence)

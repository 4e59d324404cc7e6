"""What a session did, as typed records of raw numbers (bytes, seconds, bytes/s), and their JSON form for
--stats-json and the API: units and rounding only at that edge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .paths import PathState
from .reorder import ReorderBuffer
from .sendbuf import SendBuffer


class _Hasher(Protocol):
    def hexdigest(self) -> str: ...


class Session(Protocol):
    """What these functions read of a session (proto.session.Session), without importing it back."""

    @property
    def started(self) -> float: ...
    @property
    def sendbuf(self) -> SendBuffer: ...
    @property
    def reorder(self) -> ReorderBuffer: ...
    @property
    def paths(self) -> Mapping[int, PathState]: ...
    @property
    def resent_bytes(self) -> int: ...
    @property
    def first_resend_at(self) -> float | None: ...
    @property
    def copied_bytes(self) -> int: ...
    @property
    def tx_digest(self) -> _Hasher: ...
    @property
    def rx_digest(self) -> _Hasher: ...
    @property
    def digest_ok(self) -> bool | None: ...
    @property
    def peer_fin(self) -> int | None: ...
    @property
    def recv_done(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class PathStats:
    id: int
    label: str
    alive: bool
    up_at: float  # when it (last) joined, seconds after the session started: the start-up cost per path
    bytes_sent: int
    bytes_received: int
    chunks_sent: int
    chunks_received: int
    resent_chunks: int
    stale_events: int
    stale_at: float | None
    rate_estimate: float  # bytes/s
    srtt: float | None  # seconds
    net_rtt: float | None
    down_reason: str
    down_at: float | None
    backup: bool = False


@dataclass(frozen=True, slots=True)
class SessionStats:
    elapsed: float
    bytes_sent: int  # written by the application
    bytes_acked: int
    bytes_received: int  # handed to the application and consumed
    resent_bytes: int
    first_resend: float | None
    copied_bytes: int  # --redundant: second copies sent
    duplicate_bytes_dropped: int
    peak_reorder_bytes: int
    peak_reorder_ranges: int
    sent_digest: str | None
    received_digest: str | None
    digest_ok: bool | None
    paths: tuple[PathStats, ...]


def _since(t: float | None, start: float) -> float | None:
    return None if t is None else t - start


def snapshot(s: Session, now: float) -> SessionStats:
    start, reorder = s.started, s.reorder
    paths = tuple(PathStats(
        p.id, p.label, p.alive, p.up_since - start, p.sent, p.received, p.chunks_sent, p.chunks_received,
        p.resent_chunks, p.stale_events, _since(p.stale_at, start), p.rate, p.srtt, p.net_rtt, p.down_reason,
        _since(p.down_at, start), p.backup,
    ) for p in s.paths.values())
    return SessionStats(
        max(now - start, 1e-9), s.sendbuf.written, s.sendbuf.acked, reorder.consumed, s.resent_bytes,
        _since(s.first_resend_at, start), s.copied_bytes, reorder.stats.duplicate_bytes, reorder.stats.peak_buffered,
        reorder.stats.peak_ranges, s.tx_digest.hexdigest() if s.sendbuf.eof else None,
        s.rx_digest.hexdigest() if s.recv_done else None, s.digest_ok, paths,
    )


def _r(x: float | None, scale: float = 1.0, digits: int = 3) -> float | None:
    return None if x is None else round(x * scale, digits)


def _mbit(nbytes: float, seconds: float) -> float:
    return round(nbytes * 8 / seconds / 1e6, 2)


def path_json(p: PathStats, elapsed: float) -> dict[str, Any]:
    return {
        "id": p.id, "label": p.label, "alive": p.alive, "backup": p.backup, "up_at_s": _r(p.up_at),
        "bytes_sent": p.bytes_sent, "bytes_received": p.bytes_received,
        "chunks_sent": p.chunks_sent, "chunks_received": p.chunks_received,
        "resent_chunks": p.resent_chunks, "stale_events": p.stale_events, "stale_at_s": _r(p.stale_at),
        "send_mbit_s": _mbit(p.bytes_sent, elapsed), "recv_mbit_s": _mbit(p.bytes_received, elapsed),
        "rate_estimate_mbit_s": round(p.rate_estimate * 8 / 1e6, 2),
        "srtt_ms": _r(p.srtt, 1e3, 2), "net_rtt_ms": _r(p.net_rtt, 1e3, 2),
        "down_reason": p.down_reason or None, "down_at_s": _r(p.down_at),
    }


def to_json(st: SessionStats) -> dict[str, Any]:
    """The --stats-json form (docs: README): rounded, Mbit/s and milliseconds."""
    return {
        "elapsed_s": round(st.elapsed, 3),
        "bytes_sent": st.bytes_sent, "bytes_acked": st.bytes_acked, "bytes_received": st.bytes_received,
        "resent_bytes": st.resent_bytes, "first_resend_s": _r(st.first_resend), "copied_bytes": st.copied_bytes,
        "duplicate_bytes_dropped": st.duplicate_bytes_dropped,
        "peak_reorder_bytes": st.peak_reorder_bytes, "peak_reorder_ranges": st.peak_reorder_ranges,
        "digest": "xxh3-128", "sent_digest": st.sent_digest, "received_digest": st.received_digest,
        "digest_ok": st.digest_ok,
        "send_mbit_s": _mbit(st.bytes_acked, st.elapsed), "recv_mbit_s": _mbit(st.bytes_received, st.elapsed),
        "paths": [path_json(p, st.elapsed) for p in st.paths],
    }


def progress_line(s: Session) -> str:
    """What got through, for the one-line error of a failed transfer."""
    sb, parts = s.sendbuf, []
    if sb.written or sb.eof:
        parts.append(f"{sb.acked} of {sb.written}{'' if sb.eof else '+'} bytes sent were acknowledged")
    if s.recv_done:
        parts.append(f"all {s.reorder.consumed} bytes received")
    else:
        total = "" if s.peer_fin is None else f" of {s.peer_fin}"
        parts.append(f"{s.reorder.consumed}{total} bytes received, output incomplete")
    return "; ".join(parts)

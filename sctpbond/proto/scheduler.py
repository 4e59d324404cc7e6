"""Path scheduler: how many new bytes each path may take now.

Not round-robin. Each path gets a byte quota of `rate x delay_target` where `rate` is its measured delivery rate
(from the per-path receive counters the peer echoes in every ACK) and `in_flight = sent - peer_received`. A path
asks for work when its socket can take more (pull model); it gets a chunk only while in_flight < quota. So a
fast path carries more, a slow one less, and every path holds about `delay_target` worth of data: chunks sent
at the same moment arrive at about the same time, which keeps the receiver's reorder buffer small (the
receive-buffer-blocking trap of CMT-SCTP, Iyengar et al. 2006). If a path is limited by its quota its rate
sample is quota/delay, and since delay < target the quota grows until the link, not the quota, is the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .paths import PathState


@dataclass(frozen=True)
class SchedulerConfig:
    delay_target: float = 0.05  # seconds of data each path may hold in its queues
    # The floor covers the ACK loop on a slow link: a 256 KiB chunk acknowledged as a whole, the next one on the
    # wire, and the time the ACK takes through both processes. 128 KiB (+ one chunk) let 20 Mbit/s SCTP paths run
    # dry whenever a busy CPU delayed an ACK by more than 50 ms: 63 against 68 Mbit/s on 4 x 20 in the VM (4 runs
    # each, interleaved). Paths faster than ~80 Mbit/s have rate x delay_target above it anyway.
    min_quota: int = 512 * 1024
    initial_quota: int = 1 << 20
    max_quota: int = 32 << 20
    sample_interval: float = 0.05
    max_chunk: int = 256 * 1024
    min_chunk: int = 256 * 1024  # per-frame cost rules on slow CPUs (the SCTP VM); 105 ms at 20 Mbit/s
    chunk_time: float = 0.02  # a path's chunks are about this long on its link (a power of two in bytes)


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

    def chunk(self, path: PathState) -> int:
        """Chunk size for `path`: about `chunk_time` of its rate, so a fast path moves few large frames (the
        per-frame cost is what limits a 1 Gbit/s path in Python) and a slow one keeps its queue short; never more
        than its transport takes (`max_chunk`: an SCTP send buffer holds several frames, docs/sctp-notes.md)."""
        cfg = self.config
        most = min(cfg.max_chunk, path.max_chunk) if path.max_chunk else cfg.max_chunk
        size = min(cfg.min_chunk, most)
        target = path.rate * cfg.chunk_time if path.rate > 0 else 256 * 1024
        while size * 2 <= min(target, most):
            size *= 2
        return size

    def quota(self, path: PathState) -> int:
        cfg = self.config
        if path.rate <= 0:
            return cfg.initial_quota
        # A long path needs at least two RTTs of data or its own quota would throttle it. One chunk of headroom:
        # a path sending k chunks per round trip measures k chunks/RTT, and without the extra chunk its quota
        # could stay too small to ever grant chunk k+1 (a fixed point below the link rate).
        # The RTT is the transport's when it reports one. A PING's RTT includes the data queued before it in
        # our own socket, i.e. the quota itself: on a slow link the initial quota made it read ~0.4 s, which
        # doubled the quota, which kept the queue that long (measured over SCTP at 20 Mbit/s: such paths held
        # 0.9 s of data and finished 0.6 s after the others).
        rtt = path.net_rtt if path.net_rtt is not None else (path.min_rtt or 0.0)
        target = max(cfg.delay_target, 2 * rtt)
        return int(min(cfg.max_quota, max(cfg.min_quota, path.rate * target))) + self.chunk(path)

    def grant(self, path: PathState) -> int:
        """Bytes of new data `path` may take now (0: let the others work)."""
        if not path.alive or path.stale:
            return 0
        quota, chunk = self.quota(path), self.chunk(path)
        budget = quota - path.in_flight
        # Refuse slivers: a path waits until it can take a sizeable piece (a chunk, or a quarter of a small quota:
        # a slow path must still keep a chunk in flight while it serializes one), which keeps frames large.
        if budget < min(chunk, quota // 4):
            return 0
        return min(chunk, budget)

    def on_peer_received(self, path: PathState, value: int, now: float) -> None:
        """The peer reports `value` payload bytes received on `path` (cumulative): update the rate estimate."""
        if value <= path.peer_received:
            return
        if path._sample_t == 0.0:
            path._sample_t, path._sample_rx = now, path.peer_received
        path.peer_received = value
        elapsed = now - path._sample_t
        if elapsed >= self.config.sample_interval:
            sample = (value - path._sample_rx) / elapsed
            path.rate = sample if path.rate <= 0 else 0.6 * path.rate + 0.4 * sample
            path._sample_t, path._sample_rx = now, value

    def on_idle(self, path: PathState, now: float) -> None:
        """Nothing in flight: restart the sample so idle time does not count as slowness."""
        path._sample_t, path._sample_rx = now, path.peer_received

    @staticmethod
    def on_rtt(path: PathState, sample: float) -> None:
        path.min_rtt = sample if path.min_rtt is None else min(path.min_rtt, sample)
        path.srtt = sample if path.srtt is None else 0.875 * path.srtt + 0.125 * sample

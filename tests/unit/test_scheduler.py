"""Scheduler: per-path byte quotas from measured delivery rates; grants for the pull model."""

from __future__ import annotations

import pytest

from sctpbond.proto.scheduler import PathState, Scheduler, SchedulerConfig

CFG = SchedulerConfig(
    delay_target=0.05,
    min_quota=64 * 1024,
    initial_quota=1 << 20,
    max_quota=32 << 20,
    sample_interval=0.05,
    max_chunk=256 * 1024,
)
T0 = 1000.0  # a realistic monotonic clock value


def feed_rate(s: Scheduler, p: PathState, rate: float, seconds: float, start: float, step: float = 0.01) -> float:
    """The peer reports `rate` bytes/s arriving on p for `seconds`; the path keeps enough in flight."""
    t = start
    while t < start + seconds - 1e-9:
        t += step
        p.sent = max(p.sent, p.peer_received + int(rate * step) + 1)
        s.on_peer_received(p, p.peer_received + int(rate * step), t)
    return t


def test_initial_quota_before_any_sample() -> None:
    s = Scheduler(CFG)
    p = PathState(0)
    assert s.quota(p) == CFG.initial_quota
    assert s.grant(p) == CFG.max_chunk


def test_quota_grows_from_rate_samples() -> None:
    s = Scheduler(CFG)
    p = PathState(0)
    t = feed_rate(s, p, 10e6, 0.5, T0)  # 10 MB/s
    assert p.rate == pytest.approx(10e6, rel=0.02)
    q1 = s.quota(p)
    assert q1 == pytest.approx(10e6 * CFG.delay_target, rel=0.02)
    t = feed_rate(s, p, 100e6, 1.0, t)  # the link turns out faster: the quota follows
    assert p.rate == pytest.approx(100e6, rel=0.02)
    q2 = s.quota(p)
    assert q2 > 5 * q1
    assert q2 == pytest.approx(100e6 * CFG.delay_target, rel=0.02)


def test_quota_is_clamped() -> None:
    s = Scheduler(CFG)
    slow, fast = PathState(0), PathState(1)
    feed_rate(s, slow, 10e3, 0.5, T0)  # 10 kB/s * 50 ms = 500 bytes: below the floor
    feed_rate(s, fast, 10e9, 0.5, T0)
    assert s.quota(slow) == CFG.min_quota
    assert s.quota(fast) == CFG.max_quota


def test_rate_sample_needs_sample_interval() -> None:
    s = Scheduler(CFG)
    p = PathState(0, sent=10**9)
    s.on_peer_received(p, 1000, T0)
    s.on_peer_received(p, 2000, T0 + 0.01)
    assert p.peer_received == 2000 and p.rate == 0.0  # too short to be a sample
    s.on_peer_received(p, 1_000_000, T0 + 0.1)
    assert p.rate == pytest.approx((1_000_000 - 0) / 0.1)


def test_stale_counter_is_ignored() -> None:
    s = Scheduler(CFG)
    p = PathState(0, sent=10_000)
    s.on_peer_received(p, 5000, T0)
    s.on_peer_received(p, 4000, T0 + 1)
    assert p.peer_received == 5000
    assert p.in_flight == 5000


def test_on_idle_restarts_the_sample() -> None:
    s = Scheduler(CFG)
    p = PathState(0, sent=10**9)
    feed_rate(s, p, 10e6, 0.5, T0)
    rate = p.rate
    s.on_idle(p, T0 + 10)  # ten seconds with nothing to send
    s.on_peer_received(p, p.peer_received + 100_000, T0 + 10.01)
    s.on_peer_received(p, p.peer_received + 500_000, T0 + 10.06)
    # the sample covers only the 50 ms since the restart, not the idle time
    assert p.rate > rate * 0.9


def test_grant_is_zero_for_a_dead_path() -> None:
    s = Scheduler(CFG)
    p = PathState(0)
    assert s.grant(p) > 0
    p.alive = False
    assert s.grant(p) == 0


def test_grant_is_zero_when_in_flight_reaches_quota() -> None:
    s = Scheduler(CFG)
    p = PathState(0)
    quota = s.quota(p)
    p.sent = quota
    assert p.in_flight == quota
    assert s.grant(p) == 0
    p.sent = quota + 12345  # resends may push past the quota
    assert s.grant(p) == 0


def test_grant_is_budget_but_refuses_slivers() -> None:
    cfg = SchedulerConfig(initial_quota=100_000, max_chunk=30_000)
    s = Scheduler(cfg)
    p = PathState(0)
    assert s.grant(p) == 30_000  # capped by max_chunk
    p.sent = 65_000
    assert s.grant(p) == 30_000  # budget 35_000
    p.sent = 75_000
    assert s.grant(p) == 0  # budget 25_000 < one chunk: wait for a sizeable grant
    s.on_peer_received(p, 10_000, T0)
    assert p.in_flight == 65_000
    assert s.grant(p) == 30_000
    # a quota smaller than two chunks: half the quota is enough
    small = Scheduler(SchedulerConfig(initial_quota=40_000, max_chunk=30_000))
    q = PathState(1, sent=15_000)
    assert small.grant(q) == 25_000
    q.sent = 21_000
    assert small.grant(q) == 0


def test_slow_path_gets_proportionally_smaller_quota() -> None:
    s = Scheduler(CFG)
    fast, slow = PathState(0), PathState(1)
    feed_rate(s, fast, 50e6, 0.5, T0)
    feed_rate(s, slow, 5e6, 0.5, T0)
    qf, qs = s.quota(fast), s.quota(slow)
    assert qf / qs == pytest.approx(10, rel=0.05)
    # with everything in flight that each may hold, the fast path takes ~10x the bytes
    fast.sent, slow.sent = fast.peer_received, slow.peer_received
    taken = {0: 0, 1: 0}
    for p in (fast, slow):
        while (g := s.grant(p)) > 0:
            p.sent += g
            taken[p.id] += g
    assert taken[0] / taken[1] == pytest.approx(10, rel=0.15)


def test_long_path_quota_covers_two_rtts() -> None:
    s = Scheduler(CFG)
    p = PathState(0)
    feed_rate(s, p, 10e6, 0.5, T0)
    base = s.quota(p)
    Scheduler.on_rtt(p, 0.2)
    assert p.min_rtt == 0.2 and p.srtt == 0.2
    assert s.quota(p) == pytest.approx(10e6 * 0.4, rel=0.02)
    assert s.quota(p) > base
    Scheduler.on_rtt(p, 0.01)
    assert p.min_rtt == 0.01
    assert p.srtt == pytest.approx(0.875 * 0.2 + 0.125 * 0.01)
    assert s.quota(p) == base  # 2 * 10 ms < delay_target

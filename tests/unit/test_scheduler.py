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
    min_chunk=256 * 1024,  # a fixed chunk: these tests are about quotas (adaptive chunks: test_chunk_size_*)
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


def quota_for(rate_target_bytes: float) -> float:
    """rate x target, clamped, plus the one chunk of headroom that keeps a quota-limited path growing."""
    return min(CFG.max_quota, max(CFG.min_quota, rate_target_bytes)) + CFG.max_chunk


def test_quota_grows_from_rate_samples() -> None:
    s = Scheduler(CFG)
    p = PathState(0)
    t = feed_rate(s, p, 10e6, 0.5, T0)  # 10 MB/s
    assert p.rate == pytest.approx(10e6, rel=0.02)
    q1 = s.quota(p)
    assert q1 == pytest.approx(quota_for(10e6 * CFG.delay_target), rel=0.02)
    t = feed_rate(s, p, 100e6, 1.0, t)  # the link turns out faster: the quota follows
    assert p.rate == pytest.approx(100e6, rel=0.02)
    q2 = s.quota(p)
    assert q2 > 4 * q1
    assert q2 == pytest.approx(quota_for(100e6 * CFG.delay_target), rel=0.02)


def test_quota_is_clamped() -> None:
    s = Scheduler(CFG)
    slow, fast = PathState(0), PathState(1)
    feed_rate(s, slow, 10e3, 0.5, T0)  # 10 kB/s * 50 ms = 500 bytes: below the floor
    feed_rate(s, fast, 10e9, 0.5, T0)
    assert s.quota(slow) == CFG.min_quota + CFG.max_chunk
    assert s.quota(fast) == CFG.max_quota + CFG.max_chunk


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
    p.sent = 80_000
    assert s.grant(p) == 0  # budget 20_000 < min(chunk, quota / 4): wait for a sizeable grant
    s.on_peer_received(p, 10_000, T0)
    assert p.in_flight == 70_000
    assert s.grant(p) == 30_000
    # a quota smaller than four chunks: a quarter of the quota is enough
    small = Scheduler(SchedulerConfig(initial_quota=40_000, max_chunk=30_000))
    q = PathState(1, sent=15_000)
    assert small.grant(q) == 25_000
    q.sent = 21_000
    assert small.grant(q) == 19_000
    q.sent = 31_000
    assert small.grant(q) == 0  # 9_000 < 40_000 / 4


def test_slow_path_gets_proportionally_smaller_quota() -> None:
    s = Scheduler(CFG)
    fast, slow = PathState(0), PathState(1)
    feed_rate(s, fast, 50e6, 0.5, T0)
    feed_rate(s, slow, 5e6, 0.5, T0)
    qf, qs = s.quota(fast) - CFG.max_chunk, s.quota(slow) - CFG.max_chunk  # minus the headroom chunk
    assert qf / qs == pytest.approx(10, rel=0.05)
    # with everything in flight that each may hold, the fast path takes ~10x the bytes
    fast.sent, slow.sent = fast.peer_received, slow.peer_received
    taken = {0: 0, 1: 0}
    for p in (fast, slow):
        while (g := s.grant(p)) > 0:
            p.sent += g
            taken[p.id] += g
    assert (taken[0] - CFG.max_chunk) / (taken[1] - CFG.max_chunk) == pytest.approx(10, rel=0.15)


def test_long_path_quota_covers_two_rtts() -> None:
    s = Scheduler(CFG)
    p = PathState(0)
    feed_rate(s, p, 10e6, 0.5, T0)
    base = s.quota(p)
    Scheduler.on_rtt(p, 0.2)
    assert p.min_rtt == 0.2 and p.srtt == 0.2
    assert s.quota(p) == pytest.approx(quota_for(10e6 * 0.4), rel=0.02)
    assert s.quota(p) > base
    Scheduler.on_rtt(p, 0.01)
    assert p.min_rtt == 0.01
    assert p.srtt == pytest.approx(0.875 * 0.2 + 0.125 * 0.01)
    assert s.quota(p) == base  # 2 * 10 ms < delay_target


def test_transport_rtt_sizes_the_quota_instead_of_pings_that_waited_behind_our_queue() -> None:
    """A PING queues behind the data already in our socket: on a 20 Mbit/s path holding the initial 1 MiB quota it
    reads ~0.4 s. Sizing the quota from it doubled the quota and kept that queue standing (measured over SCTP in
    the VM). The transport's own RTT (SCTP srtt, TCP_INFO) excludes our queue, so it wins when known."""
    s = Scheduler(SchedulerConfig())
    p = PathState(0)
    feed_rate(s, p, 20e6 / 8, 0.5, T0)
    bare = s.quota(p)
    Scheduler.on_rtt(p, 0.4)  # the ping that waited behind 1 MiB
    inflated = s.quota(p)
    assert inflated > 2.5 * bare
    p.net_rtt = 0.007
    assert s.quota(p) == bare  # 2 x 7 ms is below the delay target
    p.net_rtt = 0.2  # a long path, as the transport sees it
    assert s.quota(p) == int(p.rate * 0.4) + s.chunk(p)


# -- convergence: a closed loop of grant -> link -> per-chunk receive counter -> rate sample ------------------------


def closed_loop(cfg: SchedulerConfig, link_rate: float, rtt: float, start_rate: float, seconds: float = 5.0) -> float:
    """One path driven by its own grants: chunks serialise at link_rate, each is reported received one RTT after
    it left the link, and the path asks for more after every report. Returns the final rate estimate."""
    import heapq

    s = Scheduler(cfg)
    p = PathState(0, rate=start_rate)
    Scheduler.on_rtt(p, rtt)  # pings measure the bare RTT
    t = busy = T0
    p._sample_t, p._sample_rx = t, 0
    reports: list[tuple[float, int]] = []

    def pull(now: float) -> None:
        nonlocal busy
        while (g := s.grant(p)) > 0:
            p.sent += g
            busy = max(busy, now) + g / link_rate
            heapq.heappush(reports, (busy + rtt, p.sent))

    pull(t)
    while reports and t < T0 + seconds:
        t, value = heapq.heappop(reports)
        s.on_peer_received(p, value, t)
        pull(t)
    return p.rate


@pytest.mark.parametrize(("mbit", "rtt"), [(20, 0.0005), (200, 0.0005), (1000, 0.0005), (1000, 0.01), (400, 0.03)])
def test_fresh_path_converges_to_link_rate(mbit: int, rtt: float) -> None:
    link = mbit * 1e6 / 8
    assert closed_loop(SchedulerConfig(), link, rtt, start_rate=0.0) > 0.9 * link


@pytest.mark.parametrize(
    ("mbit", "rtt", "start"),
    [(200, 0.03, 0.1), (1000, 0.03, 0.02), (100, 0.03, 0.0), (50, 0.02, 0.0)],
    ids=["200M-30ms-dip", "1G-30ms-dip", "100M-30ms-fresh", "50M-20ms-fresh"],
)
def test_quota_limited_path_recovers_from_a_low_estimate(mbit: int, rtt: float, start: float) -> None:
    """Default config, WAN-like RTTs. With an estimate that once dipped (slow start, a transient, a re-join that
    reset the rate) or even from a fresh start, the path must grow back to its link (before the quota had one chunk
    of headroom, 200 Mbit/s stayed at ~52, 1 Gbit/s at ~65, fresh 100 / 50 Mbit/s paths at ~41 / ~30)."""
    link = mbit * 1e6 / 8
    assert closed_loop(SchedulerConfig(), link, rtt, start_rate=start * link) > 0.8 * link


@pytest.mark.parametrize(("rate", "chunk"), [
    (0.0, 256 * 1024),  # no sample yet
    (2.5e6, 256 * 1024),  # 20 Mbit/s: 50 kB in 20 ms, below the 256 KiB floor
    (12.5e6, 256 * 1024),  # 100 Mbit/s: 250 kB, the floor
    (50e6, 512 * 1024),  # 400 Mbit/s: 1 MB
    (125e6, 1 << 20),  # 1 Gbit/s: 2.5 MB, capped at max_chunk
])
def test_chunk_size_follows_the_path_rate(rate: float, chunk: int) -> None:
    s = Scheduler(SchedulerConfig(max_chunk=1 << 20))
    p = PathState(0, rate=rate)
    assert s.chunk(p) == chunk
    assert s.grant(p) == chunk  # nothing in flight: one whole chunk
    if rate == 0:
        assert s.quota(p) == s.config.initial_quota
    else:  # rate x delay target, clamped, plus one chunk of this path's size as headroom
        assert s.quota(p) == int(min(s.config.max_quota, max(s.config.min_quota, rate * 0.05))) + chunk


def test_chunk_size_never_exceeds_the_negotiated_maximum() -> None:
    s = Scheduler(SchedulerConfig(max_chunk=30_000))
    assert s.chunk(PathState(0, rate=1e9)) == 30_000

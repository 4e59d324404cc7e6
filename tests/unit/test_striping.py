"""Backup paths and redundant streaming (sctpbond/proto/striping.py), over the simulator (tests/unit/sim.py).

Backups: no data while a regular path is alive and not stale; the whole stream once none is; new data back on
the regular paths as soon as one returns. Redundant: every chunk on two paths, so a blackholed path stalls
nothing; the copies are bounded; a lone path still works."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sctpbond.proto.events import PathStale
from sctpbond.proto.striping import MAX_QUEUED_COPIES

from .sim import AB, BA, PathSpec, Sim
from .test_session import SIM_SETTINGS, TICK, check_streams, payload, small_config

K = 1024


def regular_and_backup(backup_rate: float = 1e6) -> list[PathSpec]:
    return [PathSpec(rate=2e6, delay=0.005), PathSpec(rate=2e6, delay=0.008), PathSpec(rate=backup_rate, delay=0.02)]


@given(seed=st.integers(0, 2**16), n_ab=st.integers(0, 600 * K), n_ba=st.integers(0, 300 * K))
@SIM_SETTINGS
def test_a_backup_carries_nothing_while_regular_paths_work(seed, n_ab, n_ba) -> None:
    data_ab, data_ba = payload(n_ab, seed), payload(n_ba, seed + 1)
    sim = Sim(small_config(), regular_and_backup(), data_ab=data_ab, data_ba=data_ba, seed=seed, tick=TICK,
              backup=frozenset({2})).run(limit=30)
    check_streams(sim, data_ab, data_ba)
    assert sim.data_bytes(AB, 2) == 0 and sim.data_bytes(BA, 2) == 0  # both directions: the listener's too
    for s in (sim.a, sim.b):
        assert s.paths[2].alive and s.paths[2].backup  # heartbeats kept it known alive


def test_the_backup_takes_over_when_every_regular_path_dies_and_hands_back() -> None:
    data = payload(3 << 20, 3)
    sim = Sim(small_config(chunk=8 * K), regular_and_backup(), data_ab=data, data_ba=data[: 1 << 20], seed=3,
              tick=TICK, backup=frozenset({2}))
    sim.at(0.1, lambda now: sim.kill(0, now))
    sim.at(0.1, lambda now: sim.kill(1, now))
    sim.at(0.6, lambda now: sim.revive(0, now))
    sim.run(limit=30)
    check_streams(sim, data, data[: 1 << 20])
    assert sim.data_bytes(AB, 2, after=0.1) > 0 and sim.data_bytes(BA, 2, after=0.1) > 0  # it carried the stream
    assert sim.data_bytes(AB, 2) == sim.data_bytes(AB, 2, after=0.1)  # and nothing before
    back = 0.6 + 0.05  # path 0 is back (READY plus a round trip): the backup sends only what it already held
    assert sim.data_bytes(AB, 2, after=back) <= small_config().scheduler.max_quota
    assert sim.data_bytes(AB, 0, after=back) > 1 << 20


def test_the_backup_takes_over_from_a_blackholed_regular_path_once_it_is_stale() -> None:
    cfg = dataclasses.replace(small_config(chunk=8 * K), stale_after=0.1, dead_after=1.0)
    paths = [PathSpec(rate=2e6, delay=0.005), PathSpec(rate=1e6, delay=0.02)]
    data = payload(2 << 20, 5)
    sim = Sim(cfg, paths, data_ab=data, seed=5, tick=TICK, backup=frozenset({1}))
    sim.at(0.2, lambda now: sim.blackhole(0, now))
    sim.run(limit=30)
    check_streams(sim, data, b"")
    stale = [t for t, side, e in sim.log if side == "a" and isinstance(e, PathStale) and e.path_id == 0]
    assert stale and stale[0] < 0.2 + 2 * cfg.stale_after
    assert sim.data_bytes(AB, 1, after=0.2) == sim.data_bytes(AB, 1) > 0
    assert sim.data_bytes(AB, 1, after=stale[0]) >= len(data) - sim.a.paths[0].sent - 64 * K


def progress_gaps(sim: Sim, after: float) -> list[float]:
    """The gaps between moments the receiver's in-order stream (b's) moved forward, from `after` on."""
    marks: list[tuple[float, int]] = []

    def watch(s: Sim, d: str, pid: int, frame: object) -> None:
        if d == AB and (not marks or s.b.reorder.next_offset > marks[-1][1]):
            marks.append((s.now, s.b.reorder.next_offset))

    sim.on_receive = watch
    sim.run(limit=30)
    times = [after] + [t for t, _ in marks if t > after]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@pytest.mark.parametrize("redundant", [False, True])
def test_redundant_copies_hide_a_blackholed_path(redundant) -> None:
    cfg = dataclasses.replace(small_config(chunk=8 * K), redundant=redundant)
    paths = [PathSpec(rate=2e6, delay=0.005), PathSpec(rate=2e6, delay=0.006), PathSpec(rate=2e6, delay=0.007)]
    data = payload(2 << 20, 11)
    sim = Sim(cfg, paths, data_ab=data, seed=11, tick=TICK, write_block=16 * K)
    sim.at(0.1, lambda now: sim.blackhole(1, now))
    worst = max(progress_gaps(sim, after=0.1))
    check_streams(sim, data, b"")
    if redundant:
        assert worst < 0.05, worst  # never waited for the stale detection
        first: dict[int, float] = {}
        covered: dict[int, set[int]] = {}
        for r in sim.sends:
            if r.direction == AB:
                first.setdefault(r.offset, r.t)
                covered.setdefault(r.offset, set()).add(r.pid)
        # Every chunk that went into the blackhole also went on another path; a copy whose original was
        # acknowledged before its turn is skipped, so on the clean paths most (not all) chunks have two.
        lost = [off for off, t in first.items() if 0.1 <= t < 0.3 and 1 in covered[off]]
        assert lost and all(len(covered[off]) >= 2 for off in lost), lost
        early = [off for off, t in first.items() if t < 0.09]
        assert sum(len(covered[off]) >= 2 for off in early) >= 0.6 * len(early)
        assert sim.a.copied_bytes >= sum(r.size for r in sim.sends if r.t < 0.1) // 2 - 64 * K
    else:
        assert worst > 0.1, worst  # the gap redundancy removes: the chunks stuck on the blackholed path
        assert sim.a.copied_bytes == 0


def test_redundant_with_one_path_and_with_a_slow_partner() -> None:
    """One path: nothing to copy to. A partner ten times slower: its copies queue up to MAX_QUEUED_COPIES, the
    oldest dropped (their chunk has one copy again), and the stream completes byte-exact either way."""
    cfg = dataclasses.replace(small_config(chunk=2 * K), redundant=True)
    data = payload(1 << 20, 2)
    lone = Sim(cfg, [PathSpec(rate=2e6)], data_ab=data, seed=2, tick=TICK).run(limit=30)
    check_streams(lone, data, b"")
    assert lone.a.copied_bytes == 0
    sim = Sim(cfg, [PathSpec(rate=4e6), PathSpec(rate=0.2e6)], data_ab=data, data_ba=data, seed=2, tick=TICK)
    sim.run(limit=60)
    check_streams(sim, data, data)
    assert 0 < sim.a.copied_bytes < len(data)
    assert len(sim.a.striper._copies.get(1, ())) <= MAX_QUEUED_COPIES


def test_redundant_copies_survive_the_death_of_either_path() -> None:
    cfg = dataclasses.replace(small_config(chunk=8 * K), redundant=True)
    data = payload(2 << 20, 4)
    for victim in (0, 1):
        sim = Sim(cfg, [PathSpec(rate=2e6, delay=0.004), PathSpec(rate=2e6, delay=0.009)], data_ab=data,
                  data_ba=data, seed=4, tick=TICK)
        sim.at(0.15, functools.partial(sim.kill, victim))
        sim.run(limit=30)
        check_streams(sim, data, data)

"""Bounds on what a peer can make a session queue or tolerate (proto/session.py, driven directly, no network).

- Control frames are deduplicated per path and type (wire-format.md, PING / PONG): a peer that floods PINGs and
  never reads our answers costs one queued PONG, answering its newest PING.
- Authentication failures fail their path, as a dead path does; more than `auth_failures` (3) on one path within
  `auth_failure_period` (60 s) abort the session with ABORT(INTEGRITY) (wire-format.md, "Sealed and
  authenticated frames").
"""

from __future__ import annotations

import tracemalloc

import pytest

from sctpbond.errors import IntegrityError
from sctpbond.proto.frames import Abort, AbortCode, Data, Fin, Ping, Pong
from sctpbond.proto.session import Session, SessionConfig, Wake

MiB = 1 << 20


def session(paths=(0, 1, 2), now: float = 0.0, config: SessionConfig | None = None) -> Session:
    s = Session(config or SessionConfig(), peer_window=64 * MiB, peer_max_chunk=MiB, now=now)
    for pid in paths:
        s.add_path(pid, now)
    s.take_wake()
    return s


def drain(s: Session, pid: int, now: float, limit: int = 100) -> list:
    out = []
    while (frame := s.next_frame(pid, now)) is not None:
        out.append(frame)
        assert len(out) <= limit, "next_frame never runs dry"
    return out


# -- control frame queue -----------------------------------------------------------------------------------------

def test_ping_flood_queues_one_pong_answering_the_newest() -> None:
    """100,000 PINGs on a path whose sender never calls next_frame (a peer that never reads)."""
    s = session()
    tracemalloc.start()
    try:
        for i in range(100_000):
            s.receive(0, Ping(i), 0.001 + i * 1e-6)
            if i % 10_000 == 0:
                assert len(s._ctrl[0]) <= 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak} bytes for a PING flood"
    assert len(s._ctrl[0]) == 1
    assert drain(s, 0, 0.2) == [Pong(99_999)]
    assert drain(s, 1, 0.2) == [] and drain(s, 2, 0.2) == []  # the other paths owe nothing


def test_each_ping_read_in_time_is_answered() -> None:
    s = session()
    for i in range(5):
        s.receive(0, Ping(1000 + i), 0.01 * i)
        assert s.next_frame(0, 0.01 * i) == Pong(1000 + i)
        assert s.next_frame(0, 0.01 * i) is None


def test_pongs_are_per_path() -> None:
    s = session()
    for i in range(1000):
        for pid in (0, 1, 2):
            s.receive(pid, Ping(10 * i + pid), 0.001)
    for pid in (0, 1, 2):
        assert drain(s, pid, 0.002) == [Pong(9990 + pid)]


def test_at_most_one_frame_of_each_type_waits() -> None:
    """FIN retries, heartbeats and PONGs pile up on a path nobody drains: one of each."""
    s = session(paths=(0,))
    s.close_send(0.0)  # FIN queued
    t = 0.0
    for i in range(2000):
        t = i * 0.05
        s.receive(0, Ping(i), t)  # keeps the path alive, and asks for PONGs
        s.handle_timer(t)  # PINGs every 0.2 s, FIN again every second (nothing was acknowledged)
        assert len(s._ctrl[0]) <= 3
    frames = drain(s, 0, t)
    assert sorted(type(f).__name__ for f in frames) == ["Fin", "Ping", "Pong"]
    assert Pong(1999) in frames
    assert next(f for f in frames if isinstance(f, Fin)).total == 0
    assert s.take_wake() & Wake.SEND


def test_newest_frame_replaces_the_queued_one_of_its_type() -> None:
    s = session(paths=(0,))
    s.receive(0, Ping(1), 0.0)
    s.close_send(0.0)
    s.receive(0, Ping(2), 0.0)  # the queued PONG(1) goes, PONG(2) joins the queue behind the FIN
    assert drain(s, 0, 0.0) == [Fin(0, s.tx_digest.digest()), Pong(2)]


def test_data_still_flows_behind_the_flood() -> None:
    """A PING flood does not starve the path's data: after its one PONG the path sends data."""
    s = session(paths=(0,))
    s.write(b"d" * 1000)
    for i in range(10_000):
        s.receive(0, Ping(i), 0.001)
    assert s.next_frame(0, 0.002) == Pong(9_999)
    frame = s.next_frame(0, 0.002)
    assert isinstance(frame, Data) and bytes(frame.payload) == b"d" * 1000


# -- authentication failures ---------------------------------------------------------------------------------------

def test_auth_failures_fail_the_path_until_the_budget_is_spent() -> None:
    s = session()
    assert s.config.auth_failures == 3 and s.config.auth_failure_period == 60.0
    for t in (1.0, 2.0, 3.0):
        assert s.auth_failed(0, "a frame failed authentication", t) is False
        path = s.paths[0]
        assert not path.alive and path.down_reason == "a frame failed authentication" and path.down_at == t
        assert s.failure is None
        assert s.take_wake() & Wake.STATE
        s.add_path(0, t + 0.5)  # the runtime re-dials it and it re-joins
        assert s.paths[0].alive
    s.take_wake()
    # the fourth within 60 s: someone is at work on the link
    assert s.auth_failed(0, "a frame failed authentication", 4.0) is True
    assert isinstance(s.failure, IntegrityError)
    assert s.failure.abort_code == AbortCode.INTEGRITY
    assert "path 0" in str(s.failure) and "4 times" in str(s.failure)
    wake = s.take_wake()
    assert wake & Wake.STATE and wake & Wake.READ and wake & Wake.WRITE  # the application learns at once
    for pid in (1, 2):
        frames = drain(s, pid, 4.0)
        assert len(frames) == 1 and isinstance(frames[0], Abort)
        assert frames[0].code == AbortCode.INTEGRITY and frames[0].reason
    assert not s.complete


def test_auth_failure_on_a_dead_path_fails_it_once() -> None:
    s = session()
    assert s.auth_failed(1, "replayed", 1.0) is False
    assert s.auth_failed(1, "replayed", 1.1) is False  # the runtime races: the path is already down
    assert not s.paths[1].alive and s.failure is None
    assert s.auth_failed(1, "replayed", 1.2) is False
    assert s.auth_failed(1, "replayed", 1.3) is True  # but every failure counts


def test_auth_failures_older_than_the_period_are_forgotten() -> None:
    s = session()
    for t in (0.0, 1.0, 2.0):
        assert s.auth_failed(0, "bad tag", t) is False
        s.add_path(0, t)
    # 61.5 s: the ones at 0 and 1 are more than 60 s old; 2 and 61.5 remain
    assert s.auth_failed(0, "bad tag", 61.5) is False
    s.add_path(0, 61.5)
    assert s.auth_failed(0, "bad tag", 62.5) is False  # 2 went as well: 61.5, 62.5
    s.add_path(0, 62.5)
    assert s.auth_failed(0, "bad tag", 63.0) is False  # three within 60 s: still a flaky link
    s.add_path(0, 63.0)
    assert s.failure is None
    assert s.auth_failed(0, "bad tag", 64.0) is True  # four within 60 s
    assert isinstance(s.failure, IntegrityError)


def test_one_failure_a_minute_never_aborts() -> None:
    s = session()
    for i in range(100):
        t = 21.0 * i
        assert s.auth_failed(2, "bad tag", t) is False
        s.add_path(2, t + 1)
    assert s.failure is None


def test_auth_failures_are_counted_per_path() -> None:
    s = session()
    for t in (1.0, 2.0, 3.0):
        for pid in (0, 1, 2):
            assert s.auth_failed(pid, "bad tag", t) is False
            s.add_path(pid, t + 0.1)
    assert s.failure is None  # nine failures, but no path had more than three
    assert s.auth_failed(1, "bad tag", 4.0) is True


def test_a_failed_path_gives_its_chunks_to_the_others() -> None:
    """Failing a path for an authentication failure is the same as losing it: its data goes out elsewhere."""
    s = session(paths=(0, 1))
    s.write(b"x" * 5000)
    first = s.next_frame(0, 0.0)
    assert isinstance(first, Data) and first.offset == 0
    assert s.auth_failed(0, "bad tag", 0.1) is False
    again = s.next_frame(1, 0.1)
    assert isinstance(again, Data) and again.offset == 0 and bytes(again.payload) == bytes(first.payload)
    assert s.next_frame(0, 0.1) is None  # the failed path sends nothing until it re-joins


@pytest.mark.parametrize(("failures", "period"), [(1, 5.0), (0, 1.0)])
def test_budget_follows_the_config(failures: int, period: float) -> None:
    s = session(config=SessionConfig(auth_failures=failures, auth_failure_period=period))
    t = 0.0
    for _ in range(failures):
        assert s.auth_failed(0, "bad tag", t) is False
        s.add_path(0, t)
        t += 0.1
    assert s.auth_failed(0, "bad tag", t) is True
    fresh = session(config=SessionConfig(auth_failures=failures, auth_failure_period=period))
    t = 0.0
    for _ in range(failures + 3):
        assert fresh.auth_failed(0, "bad tag", t) is (failures == 0)
        if fresh.failure is not None:
            break
        fresh.add_path(0, t)
        t += period + 0.5  # each one outside the period of the one before

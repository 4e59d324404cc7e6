"""Session: two sans-IO sessions over a simulated multi-path network (tests/unit/sim.py), plus direct checks.

The properties: whatever goes in comes out, in both directions, for any input size, write chunking, path
delays/rates, duplicated frames and path deaths (with one survivor); both sessions complete; every path that
was alive long enough carried data; nobody waits for a wake that never comes.
"""

from __future__ import annotations

import random
import re

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sctpbond.errors import LocalProtocolError, RemoteProtocolError, SessionAborted
from sctpbond.proto.events import PathFailed, SessionTerminated
from sctpbond.proto.frames import (
    Abort,
    AbortCode,
    Ack,
    Data,
    Fin,
    Hello,
    HelloKind,
    Ping,
    Pong,
)
from sctpbond.proto.scheduler import SchedulerConfig
from sctpbond.proto.session import Session, SessionConfig, Wake
from sctpbond.proto.stats import to_json

from .sim import AB, BA, PathSpec, Sim

K = 1024
TICK = 0.005


def small_config(window: int = 64 * K, chunk: int = 2 * K, ack_bytes: int = 8 * K) -> SessionConfig:
    """Small everything, so a few hundred KiB make hundreds of chunks, ACKs and window stalls."""
    return SessionConfig(
        window=window,
        send_cap=window,
        max_chunk=chunk,
        ping_interval=0.05,
        dead_after=0.3,
        ack_bytes=ack_bytes,
        ack_delay=0.005,
        fin_retry=0.2,
        scheduler=SchedulerConfig(
            delay_target=0.02, min_quota=8 * K, initial_quota=16 * K, max_quota=1 << 20, sample_interval=0.01,
            max_chunk=chunk,
        ),
    )


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def check_streams(sim: Sim, data_ab: bytes, data_ba: bytes) -> None:
    assert bytes(sim.output(AB)) == data_ab
    assert bytes(sim.output(BA)) == data_ba
    for s in (sim.a, sim.b):
        assert s.complete and s.failure is None
        assert s.send_done and s.recv_done
        assert s.reorder.buffered == 0


SIM_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

path_specs = st.builds(
    PathSpec,
    rate=st.floats(0.3e6, 8e6),
    delay=st.floats(0.0005, 0.03),
    sndbuf=st.sampled_from([2 * K, 8 * K, 32 * K]),
    stream=st.booleans(),
)


def sizes(largest: int) -> st.SearchStrategy[int]:
    """Stream lengths: a size class first, so big inputs are not crowded out by hypothesis' preference for small
    integers (test_duplex_transfer_survives_anything_uniform covers the space evenly)."""
    return st.sampled_from(["empty", "tiny", "medium", "large"]).flatmap(
        lambda c: {
            "empty": st.just(0),
            "tiny": st.integers(1, 2 * K),
            "medium": st.integers(2 * K, largest // 4),
            "large": st.integers(largest // 2, largest),
        }[c]
    )


def piece_sizes(n_ab: int, n_ba: int) -> list[int]:
    """Largest application write. Byte-sized writes trickle a few bytes per step into tiny frames (the sender is
    eager, like TCP_NODELAY): fine for small streams, too slow to simulate for a few hundred KiB."""
    return [1, 100, 8 * K, 64 * K] if max(n_ab, n_ba) <= 16 * K else [256, 8 * K, 64 * K]


@st.composite
def scenarios(draw, max_ab: int = 300 * K, max_ba: int = 100 * K):
    n_paths = draw(st.integers(1, 4))
    paths = draw(st.lists(path_specs, min_size=n_paths, max_size=n_paths))
    chunk = draw(st.sampled_from([512, 1 * K, 2 * K, 4 * K]))
    window = draw(st.sampled_from([8 * K, 16 * K, 64 * K]))
    window = max(window, 2 * chunk)
    cfg = small_config(window, chunk, draw(st.sampled_from([1 * K, 8 * K, 64 * K])))
    n_ab = draw(sizes(max_ab))
    n_ba = draw(sizes(max_ba))
    seed = draw(st.integers(0, 2**32 - 1))
    est = (n_ab + n_ba) / sum(p.rate for p in paths) + 0.05  # rough duration of the transfer
    # Paths that die (never all of them) and when, spread over the transfer including its tail.
    victims = draw(st.lists(st.integers(0, len(paths) - 1), unique=True, max_size=len(paths) - 1))
    deaths = {v: draw(st.floats(0.0, est)) for v in victims}
    return dict(
        config=cfg,
        paths=paths,
        data_ab=payload(n_ab, seed),
        data_ba=payload(n_ba, seed + 1),
        seed=seed,
        dup=draw(st.sampled_from([0.0, 0.0, 0.05, 0.2])),
        slow_reader=draw(st.booleans()),
        write_block=draw(st.sampled_from([None, None, window, window // 2])),
        max_piece=draw(st.sampled_from(piece_sizes(n_ab, n_ba))),
        start=draw(st.sampled_from([0.0, 1000.0])),
    ), deaths


def path_carried_data(sim: Sim, deaths: dict[int, float], config: SessionConfig) -> None:
    """Every path that stayed alive while many chunks went out in a direction carried some of them."""
    if config.window < len(sim.pids) * (config.scheduler.min_quota + config.max_chunk):
        return  # a window below the paths' minimum quotas may be held by the fastest paths alone (seed 89526)
    for d in (AB, BA):
        records = [r for r in sim.sends if r.direction == d]
        for pid in sim.pids:
            died = sim.start + deaths.get(pid, float("inf"))
            before = [r for r in records if r.t < died]
            if died - sim.start < 0.02:  # killed before its socket took its first frames: nothing to demand
                continue
            if len(before) >= 16 * len(sim.pids) and sum(r.size for r in before) >= 16 * config.max_chunk:
                assert any(r.pid == pid for r in before), f"path {pid} carried nothing {d}\n{sim.describe()}"


def run_and_check(kwargs: dict, deaths: dict[int, float]) -> Sim:
    sim = Sim(**kwargs)
    for pid, t in deaths.items():
        sim.at(sim.start + t, lambda now, pid=pid: sim.kill(pid, now))
    sim.run(limit=30)
    check_streams(sim, kwargs["data_ab"], kwargs["data_ba"])
    assert sim.timer_failures == [], "a live path was declared silent"
    assert sim.lost_wakeups == 0, "a sender found work only by its fallback timeout: a Wake.SEND was missing"
    path_carried_data(sim, deaths, kwargs["config"])
    # the dead stay dead: no data on a path after it died
    for pid, t in deaths.items():
        assert sim.data_bytes(AB, pid, after=sim.start + t + 1e-9) == 0
        assert sim.data_bytes(BA, pid, after=sim.start + t + 1e-9) == 0
    return sim


@SIM_SETTINGS
@given(scenarios())
def test_duplex_transfer_survives_anything(scenario) -> None:
    run_and_check(*scenario)


def random_scenario(seed: int) -> tuple[dict, dict[int, float]]:
    """The same space as scenarios(), drawn uniformly from a seed (hypothesis favours small draws; this makes
    sure big inputs over several paths with deaths are always well covered)."""
    rng = random.Random(seed)
    paths = [
        PathSpec(rate=rng.uniform(0.3e6, 8e6), delay=rng.uniform(0.0005, 0.03),
                 sndbuf=rng.choice([2 * K, 8 * K, 32 * K]), stream=rng.random() < 0.5)
        for _ in range(rng.randint(1, 4))
    ]
    chunk = rng.choice([512, 1 * K, 2 * K, 4 * K])
    window = max(rng.choice([8 * K, 16 * K, 64 * K]), 2 * chunk)
    cfg = small_config(window, chunk, rng.choice([1 * K, 8 * K, 64 * K]))
    n_ab = rng.choice([0, rng.randint(1, 2 * K), rng.randint(2 * K, 300 * K), rng.randint(150 * K, 300 * K)])
    n_ba = rng.choice([0, rng.randint(1, 100 * K)])
    est = (n_ab + n_ba) / sum(p.rate for p in paths) + 0.05
    victims = rng.sample(range(len(paths)), rng.randint(0, len(paths) - 1))
    kwargs = dict(
        config=cfg, paths=paths, data_ab=payload(n_ab, seed), data_ba=payload(n_ba, seed + 1), seed=seed,
        dup=rng.choice([0.0, 0.05, 0.2]), slow_reader=rng.random() < 0.5,
        write_block=rng.choice([None, window, window // 2]), max_piece=rng.choice(piece_sizes(n_ab, n_ba)),
        start=rng.choice([0.0, 1000.0]),
    )
    return kwargs, {v: rng.uniform(0.0, est) for v in victims}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_duplex_transfer_survives_anything_uniform(seed: int) -> None:
    run_and_check(*random_scenario(seed))


def rate_split(n: int, delay: float, seed: int) -> tuple[Sim, list[int], float, bytes]:
    """n - 1 paths at 4 MB/s and one at 0.4 MB/s, half a second of data at the summed rate."""
    fast, slow = 4e6, 0.4e6
    paths = [PathSpec(rate=fast, delay=delay) for _ in range(n - 1)] + [PathSpec(rate=slow, delay=delay)]
    total_rate = slow + (n - 1) * fast
    data = payload(int(0.5 * total_rate), seed)
    cfg = small_config(window=1 << 20, chunk=8 * K, ack_bytes=16 * K)
    sim = Sim(cfg, paths, data_ab=data, seed=seed).run(limit=10)
    check_streams(sim, data, b"")
    return sim, [sim.data_bytes(AB, pid) for pid in sim.pids], total_rate, data


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_ten_times_slower_path_carries_proportionally_less(n: int, seed: int) -> None:
    sim, carried, total_rate, data = rate_split(n, delay=0.002, seed=seed)
    share = carried[-1] / sum(carried)
    ideal = 0.4e6 / total_rate  # 1/11, 1/21, 1/31
    assert 0.7 * ideal < share < 1.4 * ideal, (share, ideal, carried)
    assert share < 0.5 / n  # nowhere near an equal split
    for pid in range(n - 1):
        assert carried[pid] > 6 * carried[-1], carried
    # and it takes about as long as the summed rate allows, not as long as waiting for the slow path would
    ideal_time = len(data) / total_rate
    assert sim.now - sim.start < 1.25 * ideal_time + 0.02, (sim.now, ideal_time)


def test_every_fast_path_reaches_its_share_with_10ms_rtt() -> None:
    """Same as above with a 10 ms RTT (delay_target 20 ms): one 4 MB/s path settles at ~0.66 MB/s for good."""
    _, carried, _, _ = rate_split(4, delay=0.005, seed=4)
    for pid in range(3):
        assert carried[pid] > 6 * carried[-1], carried


def window_watch(window: int):
    peaks = {"buffered": 0, "held": 0}

    def on_receive(sim: Sim, d: str, pid: int, frame) -> None:
        rb = sim.receiver_of[d].reorder
        assert rb.buffered <= window
        assert rb.buffered + rb.unconsumed <= window  # all bytes held for the application
        peaks["buffered"] = max(peaks["buffered"], rb.buffered)
        peaks["held"] = max(peaks["held"], rb.buffered + rb.unconsumed)

    return peaks, on_receive


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window_chunks=st.integers(2, 12),
    chunk=st.sampled_from([512, 1 * K, 2 * K]),
    slow_delay=st.floats(0.02, 0.08),
    slow_rate=st.floats(0.1e6, 1e6),
    seed=st.integers(0, 2**32 - 1),
    slow_reader=st.booleans(),
)
def test_window_limited_reorder_buffer_stays_within_window(window_chunks, chunk, slow_delay, slow_rate, seed,
                                                            slow_reader) -> None:
    """A slow, long path holds back the stream; the receiver never holds more than its advertised window."""
    window = window_chunks * chunk
    cfg = small_config(window=window, chunk=chunk)
    paths = [PathSpec(rate=5e6, delay=0.002), PathSpec(rate=slow_rate, delay=slow_delay)]
    data_ab, data_ba = payload(120 * K, seed), payload(40 * K, seed + 1)
    _, on_receive = window_watch(window)
    sim = Sim(cfg, paths, data_ab=data_ab, data_ba=data_ba, seed=seed, slow_reader=slow_reader,
              on_receive=on_receive)
    sim.run(limit=60)
    check_streams(sim, data_ab, data_ba)
    assert sim.b.reorder.stats.peak_buffered <= window and sim.a.reorder.stats.peak_buffered <= window


def test_window_limited_transfer_really_reorders() -> None:
    """The scenario above does exercise the reorder buffer (data held out of order up to the window)."""
    window = 16 * K
    peaks, on_receive = window_watch(window)
    # the slow link's small buffer makes it take one or two chunks at a time, the fast one the rest
    paths = [PathSpec(rate=5e6, delay=0.002), PathSpec(rate=0.3e6, delay=0.05, sndbuf=2 * K)]
    data = payload(120 * K, 3)
    sim = Sim(small_config(window=window, chunk=1 * K), paths, data_ab=data, seed=1, on_receive=on_receive)
    sim.run(limit=60)
    check_streams(sim, data, b"")
    assert 3 * window // 4 <= peaks["buffered"] <= window
    assert peaks["held"] <= window
    assert sim.a.resent_bytes > 0  # the fast path reinjected what the slow one was holding back


BLACKHOLE_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@BLACKHOLE_SETTINGS
@given(
    paths=st.lists(path_specs, min_size=2, max_size=3),
    victim_index=st.integers(0, 2),
    when=st.floats(0.0, 0.08),
    seed=st.integers(0, 2**32 - 1),
    n_ab=st.integers(0, 200 * K),
    n_ba=st.integers(0, 50 * K),
)
def test_blackholed_path_is_failed_by_silence_detection(paths, victim_index, when, seed, n_ab, n_ba) -> None:
    victim = victim_index % len(paths)
    cfg = small_config()
    data_ab, data_ba = payload(n_ab, seed), payload(n_ba, seed + 1)
    sim = Sim(cfg, paths, data_ab=data_ab, data_ba=data_ba, seed=seed, tick=TICK)
    sim.at(when, lambda now: sim.blackhole(victim, now))
    sim.run(limit=30)
    check_streams(sim, data_ab, data_ba)
    # the transfer may finish before the blackhole starts or before the silence is long enough: keep time going
    sim.run_for(max(0.0, when - sim.now) + cfg.dead_after + 3 * TICK)
    assert {(side, pid) for _, side, pid in sim.timer_failures} == {("a", victim), ("b", victim)}
    for side, s, d in (("a", sim.a, BA), ("b", sim.b, AB)):
        path = s.paths[victim]
        assert not path.alive and "no answer" in path.down_reason
        last = sim.last_arrival.get((d, victim), sim.start)  # the last frame this side heard on the path
        assert last <= when
        silence = path.down_at - last
        assert cfg.dead_after < silence <= cfg.dead_after + TICK + 1e-9, (side, silence)
        # and no other path was failed
        assert [p.id for p in s.paths.values() if not p.alive] == [victim]


def test_blackhole_mid_transfer_moves_its_data_to_the_others() -> None:
    cfg = small_config(chunk=8 * K)
    paths = [PathSpec(rate=2e6, delay=0.005), PathSpec(rate=2e6, delay=0.01), PathSpec(rate=1e6, delay=0.003)]
    data = payload(3 << 20, 7)  # about 0.6 s at 5 MB/s: the silence is detected mid-transfer
    sim = Sim(cfg, paths, data_ab=data, seed=7, tick=TICK)
    sim.at(0.03, lambda now: sim.blackhole(1, now))
    sim.run(limit=30)
    check_streams(sim, data, b"")
    for s in (sim.a, sim.b):
        down_at = s.paths[1].down_at
        assert down_at is not None and down_at <= 0.03 + cfg.dead_after + TICK + 1e-9
    assert sim.a.resent_bytes > 0  # what was stuck on the dead path went out again elsewhere
    down_at = sim.a.paths[1].down_at
    assert sim.now > down_at + 0.05
    assert sim.data_bytes(AB, 0, after=down_at) > 0 and sim.data_bytes(AB, 2, after=down_at) > 0
    assert sim.data_bytes(AB, 1, after=0.03) <= cfg.scheduler.initial_quota + cfg.max_chunk  # quota-bounded loss


# -- regressions found with the simulator ------------------------------------------------------------------------


def test_ack_lost_with_a_dying_path_is_repeated() -> None:
    """Regression: the receiver's last ACK went out on a path that then died. The sender's unacknowledged
    chunks were all on the surviving path (nothing to requeue), the receiver had nothing new to acknowledge,
    and a sender waiting for window space (the runner's input pump waits for room for a whole block) waited
    forever. fail_path now repeats the ACK on a surviving path."""
    cfg = SessionConfig(window=4096, send_cap=4096, max_chunk=1024, ack_bytes=1 << 20, ack_delay=0.005)
    t = 100.0
    a = Session(cfg, peer_window=4096, peer_max_chunk=1024, now=t)
    b = Session(cfg, peer_window=4096, peer_max_chunk=1024, now=t)
    for pid in (0, 1):
        a.add_path(pid, t)
        b.add_path(pid, t)
    a.write(bytes(range(256)) * 16)
    first = a.next_frame(0, t)  # [0, 1024) on path 0
    rest = [a.next_frame(1, t) for _ in range(3)]  # [1024, 4096) on path 1
    assert isinstance(first, Data) and all(isinstance(f, Data) for f in rest)
    t += 0.01
    for f in rest:
        b.receive(1, f, t)
    b.receive(0, first, t)  # fills the gap; the last data arrived on path 0
    assert sum(len(c) for c in b.read()) == 4096
    b.consumed(1024, t)
    t += 0.01
    b.handle_timer(t)
    ack1 = b.next_frame(0, t)
    assert isinstance(ack1, Ack) and ack1.delivered == 1024
    a.receive(0, ack1, t)
    b.consumed(3072, t)
    lost = b.next_frame(0, t)
    assert isinstance(lost, Ack) and lost.delivered == 4096
    t += 0.01
    a.fail_path(0, "reset", t)  # `lost` dies with the path
    b.fail_path(0, "reset", t)
    assert a.sendbuf.acked == 1024 and a.send_space() < 4096
    for _ in range(20):
        t += 0.01
        for s, peer in ((a, b), (b, a)):
            s.handle_timer(t)
            while (f := s.next_frame(1, t)) is not None:
                peer.receive(1, f, t)
    assert a.sendbuf.acked == 4096 and a.send_space() == 4096


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    window=st.sampled_from([4 * K, 8 * K, 16 * K]),
    chunk=st.sampled_from([512, 1 * K]),
    k=st.integers(1, 10),
    victim=st.integers(0, 1),
)
def test_path_dies_right_after_carrying_a_full_ack(seed, window, chunk, k, victim) -> None:
    """Adversarial timing: kill a path just after it carried an ACK acknowledging everything received."""
    count = [0]

    def on_send(sim: Sim, d: str, pid: int, frame) -> None:
        if (d == BA and pid == victim and isinstance(frame, Ack) and pid not in sim.killed
                and frame.delivered == sim.b.reorder.next_offset and not sim.a.sendbuf.eof):
            count[0] += 1
            if count[0] == k:
                sim.kill(pid, sim.now)

    rng = random.Random(seed)
    paths = [PathSpec(rate=rng.uniform(0.5e6, 5e6), delay=rng.uniform(0.001, 0.02)) for _ in range(2)]
    data = payload(rng.randint(20 * K, 120 * K), seed)
    sim = Sim(small_config(window, chunk), paths, data_ab=data, seed=seed, write_block=window, slow_reader=True,
              on_send=on_send)
    sim.run(limit=10)
    check_streams(sim, data, b"")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_ab=150 * K, max_ba=50 * K), st.data())
def test_path_rejoins_after_dying(scenario, data) -> None:
    """A path dies and comes back under the same id (counters restart on both sides); all paths may be down
    for a while in between."""
    kwargs, _ = scenario
    sim = Sim(**kwargs)
    victim = data.draw(st.integers(0, len(sim.paths) - 1))
    t_kill = sim.start + data.draw(st.floats(0.0, 0.1))
    t_back = t_kill + data.draw(st.floats(0.001, 0.1))
    client = data.draw(st.sampled_from(["a", "b"]))
    sim.at(t_kill, lambda now: sim.kill(victim, now))
    sim.at(t_back, lambda now: sim.revive(victim, now, client))
    sim.run(limit=30)
    check_streams(sim, kwargs["data_ab"], kwargs["data_ba"])


# -- direct checks of the session API ----------------------------------------------------------------------------


def pair(cfg: SessionConfig | None = None, paths=(0, 1), now: float = 10.0) -> tuple[Session, Session]:
    cfg = cfg or small_config()
    a = Session(cfg, peer_window=cfg.window, peer_max_chunk=cfg.max_chunk, now=now)
    b = Session(cfg, peer_window=cfg.window, peer_max_chunk=cfg.max_chunk, now=now)
    for pid in paths:
        a.add_path(pid, now)
        b.add_path(pid, now)
    return a, b


def test_write_beyond_space_is_a_local_error() -> None:
    a, _ = pair(small_config(window=8 * K))
    a.write(bytes(8 * K))
    assert a.send_space() == 0
    with pytest.raises(LocalProtocolError):
        a.write(b"x")


def test_wakes() -> None:
    a, b = pair()
    assert a.take_wake() & Wake.STATE  # paths were added
    assert a.take_wake() == Wake.NONE  # taking clears
    a.write(b"hello")
    assert a.take_wake() & Wake.SEND
    frame = a.next_frame(0, 10.0)
    assert isinstance(frame, Data)
    b.take_wake()
    b.receive(0, frame, 10.01)
    assert b.take_wake() & Wake.READ
    assert [bytes(c) for c in b.read()] == [b"hello"]
    b.consumed(5, 10.02)
    assert b.take_wake() & Wake.SEND  # an ACK is due
    ack = b.next_frame(0, 10.02)
    assert isinstance(ack, Ack) and ack.delivered == 5
    a.take_wake()
    a.receive(0, ack, 10.03)
    assert a.take_wake() & Wake.WRITE  # space came back


def test_send_wakes_go_to_the_paths_concerned() -> None:
    """A Wake.SEND names the senders it is for: waking all of them for every ACK cost a slow CPU dearly."""
    a, b = pair(paths=(0, 1, 2, 3))
    for s in (a, b):
        s.take_wake()
        s.take_send_wakes()
    a.write(bytes(64 * K))
    assert a.take_wake() & Wake.SEND and a.take_send_wakes() == {0, 1, 2, 3}  # every path has room
    sent = {pid: [] for pid in (0, 1)}
    for pid in sent:  # paths 0 and 1 fill their quotas
        while (frame := a.next_frame(pid, 10.0)) is not None:
            sent[pid].append(frame)
    a.take_wake()
    a.take_send_wakes()
    a.write(bytes(0))  # more data (none here) wakes only the paths with room: 2 and 3
    assert a.take_send_wakes() == {2, 3}
    for frame in sent[1][:4]:  # ack_bytes of DATA on path 1: the receiver's ACK is due there, and only there
        b.receive(1, frame, 10.01)
    assert b.take_wake() & Wake.SEND and b.take_send_wakes() == {1}
    ack = b.next_frame(1, 10.01)
    assert isinstance(ack, Ack)
    a.receive(1, ack, 10.02)  # room on path 1 only: path 0 is still at its quota
    assert a.take_wake() & Wake.SEND and a.take_send_wakes() == {1}


def test_close_send_puts_fin_on_every_path_and_completes() -> None:
    a, b = pair(paths=(0, 1, 2))
    a.write(b"abc")
    a.close_send(10.0)
    frames = {pid: [] for pid in (0, 1, 2)}
    for pid in (0, 1, 2):
        while (f := a.next_frame(pid, 10.0)) is not None:
            frames[pid].append(f)
    fin = Fin(3, xxhash.xxh3_128(b"abc").digest())  # the FIN carries the stream's end-to-end digest
    for pid in (0, 1, 2):
        assert fin in frames[pid]
    b.close_send(10.0)
    for pid, fs in frames.items():
        for f in fs:
            b.receive(pid, f, 10.01)
    b.consumed(sum(len(c) for c in b.read()), 10.01)
    assert b.recv_done
    for pid in (0, 1, 2):
        while (f := b.next_frame(pid, 10.01)) is not None:
            a.receive(pid, f, 10.02)
    assert a.send_done and a.recv_done and a.complete
    for pid in (0, 1, 2):
        while (f := a.next_frame(pid, 10.02)) is not None:
            b.receive(pid, f, 10.03)
    assert b.complete


D16 = bytes(16)  # a FIN's digest (always 16 bytes)


def timer_failures(s: Session, now: float) -> list[int]:
    """Run the session's timers; the ids of the paths they failed (PathFailed events)."""
    s.handle_timer(now)
    failed = []
    while (e := s.next_event()) is not None:
        if isinstance(e, PathFailed):
            failed.append(e.path_id)
    return failed


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([Ack(1)], "acknowledged"),
        ([Fin(2, D16), Data(0, b"abc")], "past the end"),
        ([Fin(2, D16), Fin(3, D16)], "two FINs"),
        ([Data(0, b"abcd"), Fin(2, D16)], "less data"),
        ([Data(64 * K, b"x")], "window"),
        ([Hello(HelloKind.NEW, 0, bytes(16), bytes(16), 1, 1)], "unexpected HELLO"),
    ],
    ids=["ack-beyond-sent", "data-past-fin", "two-fins", "fin-below-received", "beyond-window", "hello"],
)
def test_peer_protocol_violations(frames, match) -> None:
    """A violation is not raised out of receive(): the core aborts the session with the code the error carries,
    tells the peer (ABORT on every path) and says so in a SessionTerminated event."""
    _, b = pair()
    for f in frames:
        b.receive(0, f, 10.0)
    assert isinstance(b.failure, RemoteProtocolError) and re.search(match, str(b.failure)), b.failure
    events = []
    while (e := b.next_event()) is not None:
        events.append(e)
    assert events[-1] == SessionTerminated(b.failure)
    abort = [f for f in iter(lambda: b.next_frame(0, 10.0), None) if isinstance(f, Abort)]
    assert abort and abort[0].code == AbortCode.PROTOCOL


def test_abort_from_peer_fails_the_session() -> None:
    a, b = pair()
    a.abort(AbortCode.CANCELLED, "output unwritable", SessionAborted("local"))
    abort = a.next_frame(0, 10.0)
    assert abort == Abort(AbortCode.CANCELLED, "output unwritable")
    assert a.next_frame(0, 10.0) is None  # nothing after an abort
    b.receive(0, abort, 10.01)
    assert isinstance(b.failure, SessionAborted) and not b.complete
    assert b.take_wake() & Wake.STATE


def test_ping_is_answered_and_measures_rtt() -> None:
    a, b = pair()
    a.handle_timer(10.0 + 0.06)  # ping_interval passed
    ping = a.next_frame(0, 10.06)
    assert isinstance(ping, Ping)
    b.receive(0, ping, 10.07)
    pong = b.next_frame(0, 10.07)
    assert pong == Pong(ping.opaque)
    a.receive(0, pong, 10.08)
    assert a.paths[0].min_rtt == pytest.approx(0.02)


def test_transport_rtt_reaches_the_path_and_is_forgotten_on_rejoin() -> None:
    a, _ = pair()
    a.transport_rtt(0, 0.007)
    assert a.paths[0].net_rtt == 0.007
    a.transport_rtt(0, None)  # a transport that cannot tell keeps the last value
    a.transport_rtt(9, 0.5)  # no such path: ignored
    assert a.paths[0].net_rtt == 0.007 and 9 not in a.paths
    a.fail_path(0, "test", 11.0)
    a.add_path(0, 12.0)  # a re-join: a new connection, maybe over another route
    assert a.paths[0].net_rtt is None


def test_stats_say_when_each_path_joined_and_when_it_last_rejoined() -> None:
    a, _ = pair(paths=(0,), now=10.0)
    a.add_path(1, 10.4)  # joined 0.4 s after the session opened
    assert [p["up_at_s"] for p in to_json(a.stats(11.0))["paths"]] == [0.0, 0.4]
    a.fail_path(1, "test", 11.0)
    a.add_path(1, 12.5)
    assert to_json(a.stats(13.0))["paths"][1]["up_at_s"] == 2.5


def test_a_busy_path_pings_only_to_refresh_its_rtt() -> None:
    """A path that keeps sending is heard by the peer anyway: it pings every rtt_probe_interval, a quiet one every
    ping_interval (the peer's silence detection must hear from it)."""
    cfg = small_config(window=1 << 20)
    cfg = SessionConfig(**{**cfg.__dict__, "scheduler": SchedulerConfig(initial_quota=1 << 20, max_chunk=2 * K)})

    def pings_in(seconds: float, busy: bool) -> int:
        """Pings from a on its one path in `seconds`; a's peer b answers everything at once."""
        a, b = pair(cfg, paths=(0,))
        if busy:
            a.write(bytes(512 * K))
        pings, t = 0, 10.0
        while t < 10.0 + seconds:
            t += 0.01
            a.handle_timer(t)
            b.handle_timer(t)
            while (frame := a.next_frame(0, t)) is not None:  # busy: one DATA frame every 10 ms
                pings += isinstance(frame, Ping)
                b.receive(0, frame, t)
                if isinstance(frame, Data):
                    break
            while (frame := b.next_frame(0, t)) is not None:
                a.receive(0, frame, t)
        return pings

    assert pings_in(1.5, busy=False) >= 10  # about every ping_interval (0.05 s), when no PONG went out instead
    assert 1 <= pings_in(1.5, busy=True) <= 2


def test_too_many_paths() -> None:
    cfg = SessionConfig(max_paths=2)
    s = Session(cfg, peer_window=1 << 20, peer_max_chunk=1 << 16, now=0.0)
    s.add_path(0, 0.0)
    s.add_path(1, 0.0)
    s.add_path(1, 0.0)  # a re-join of a known path is fine
    with pytest.raises(RemoteProtocolError):
        s.add_path(2, 0.0)


def test_chunk_is_the_smaller_of_both_sides() -> None:
    s = Session(small_config(chunk=4 * K), peer_window=1 << 20, peer_max_chunk=K, now=0.0)
    s.add_path(0, 0.0)
    s.write(bytes(10 * K))
    frame = s.next_frame(0, 0.0)
    assert isinstance(frame, Data) and len(frame.payload) == K


def test_sender_respects_peer_window() -> None:
    cfg = small_config(window=64 * K)
    s = Session(cfg, peer_window=4 * K, peer_max_chunk=K, now=0.0)
    s.add_path(0, 0.0)
    assert s.send_space() == 4 * K  # the send buffer is capped by what the peer can hold
    s.write(bytes(4 * K))
    sent = 0
    while (f := s.next_frame(0, 0.0)) is not None:
        if isinstance(f, Data):
            sent += len(f.payload)
    assert sent == 4 * K


def test_empty_transfer() -> None:
    sim = Sim(small_config(), [PathSpec(), PathSpec()], seed=1).run(limit=5)
    check_streams(sim, b"", b"")


def _deliver(src: Session, dst: Session, now: float) -> None:
    """Move every frame src has for path 0 to dst (one round)."""
    while (f := src.next_frame(0, now)) is not None:
        dst.receive(0, f, now)


def test_digest_match_acknowledges_fin_and_both_complete() -> None:
    a, b = pair()
    a.write(b"hello world")
    a.close_send(10.0)
    b.close_send(10.0)
    _deliver(a, b, 10.0)
    b.consumed(sum(len(c) for c in b.read()), 10.01)
    assert b.digest_ok is True
    _deliver(b, a, 10.02)
    _deliver(a, b, 10.03)
    assert a.send_done and b.recv_done
    assert b.stats(10.04).received_digest == xxhash.xxh3_128(b"hello world").hexdigest()


def test_digest_mismatch_fails_the_receiver_and_never_acknowledges_the_fin() -> None:
    from sctpbond.errors import IntegrityError

    a, b = pair()
    a.write(b"hello world")
    a.close_send(10.0)
    while (f := a.next_frame(0, 10.0)) is not None:
        if isinstance(f, Data):  # one byte flipped on the way, after the sender hashed it
            f = Data(f.offset, b"J" + bytes(f.payload[1:]))
        b.receive(0, f, 10.0)
    b.consumed(sum(len(c) for c in b.read()), 10.01)
    assert b.digest_ok is False
    assert isinstance(b.failure, IntegrityError) and "digest mismatch" in str(b.failure)
    frames = []
    while (f := b.next_frame(0, 10.02)) is not None:
        frames.append(f)
    assert not any(isinstance(f, Ack) and f.fin for f in frames)  # the sender is never told "all good"
    assert any(isinstance(f, Abort) and f.code == AbortCode.INTEGRITY for f in frames)
    for f in frames:
        a.receive(0, f, 10.03)
    assert not a.send_done and a.failure is not None


def test_a_silent_path_turns_stale_and_its_chunks_go_out_again_elsewhere() -> None:
    cfg = SessionConfig()  # production timings: stale after 0.4 s, dead after 1.0 s
    a, _ = pair(cfg)
    a.write(bytes(range(256)) * 4096 * 3)  # 3 MiB: more than one path's initial quota
    sent = {0: [], 1: []}
    for pid in (0, 1):
        while isinstance(f := a.next_frame(pid, 10.0), Data):
            sent[pid].append(f.offset)
    assert sent[0] and sent[1]
    on0 = sum(len(c.data) for c in a.sendbuf.iter_unacked() if c.path == 0)
    a.receive(0, Ack(on0, ((0, on0),)), 10.35)  # path 0 delivers all it took; path 1 says nothing from now on
    a.handle_timer(10.45)
    assert a.paths[1].stale and a.paths[1].alive and not a.paths[0].stale
    resent = []
    while (f := a.next_frame(0, 10.45)) is not None:
        if isinstance(f, Data):
            resent.append(f.offset)
    assert set(sent[1]) <= set(resent)  # path 1's chunks already went out on path 0
    assert not any(isinstance(a.next_frame(1, 10.45), Data) for _ in range(4))  # no new data for a stale path
    # heard again: a false alarm, back to work (duplicates are dropped downstream)
    a.receive(1, Pong(int(10.499e6)), 10.5)
    assert not a.paths[1].stale and a.paths[1].stale_events == 1
    a.receive(0, Pong(int(11.549e6)), 11.55)
    assert timer_failures(a, 11.6) == [1]  # path 1 silent since 10.5: past dead_after, now it is dead
    assert a.paths[0].alive and not a.paths[1].alive


def test_silence_limits_grow_with_a_long_round_trip() -> None:
    """Heartbeats queued behind data (a slow link, a busy CPU) are late, not lost: limits scale with the RTT."""
    a, _ = pair(SessionConfig())
    a.write(bytes(4 << 20))
    while isinstance(a.next_frame(1, 10.0), Data):
        pass
    a.paths[1].srtt = 0.5  # 3 x 0.5 s to turn stale, 6 x 0.5 s to be dead
    a.receive(0, Pong(int(12.9e6)), 12.95)
    assert timer_failures(a, 11.2) == [] and not a.paths[1].stale
    assert timer_failures(a, 11.6) == [] and a.paths[1].stale
    assert timer_failures(a, 13.1) == [1]

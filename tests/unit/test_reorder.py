"""ReorderBuffer: ranges in any order, duplicates and overlaps in, the exact stream out, memory bounded."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sctpbond.errors import RemoteProtocolError
from sctpbond.proto.frames import MAX_HELD_RANGES
from sctpbond.proto.reorder import RANGE_COST, ReorderBuffer


def drain(rb: ReorderBuffer) -> bytes:
    return b"".join(bytes(c) for c in rb.pop_ready())


STREAM = bytes(range(256)) * 4  # 1024 distinct-ish bytes


def test_in_order_fast_path_stores_nothing() -> None:
    rb = ReorderBuffer(100)
    assert rb.add(0, b"abc") is True
    assert rb.buffered == 0
    assert rb.add(3, b"def") is True
    assert rb.buffered == 0
    ready = rb.pop_ready()
    assert [bytes(c) for c in ready] == [b"abcdef"]  # small in-order pieces are joined into one buffer
    assert rb.next_offset == 6 and rb.unconsumed == 6
    assert rb.pop_ready() == []


def test_fast_path_hands_out_the_callers_object() -> None:
    payload = bytearray(b"x" * 8192)  # a chunk of ordinary size is handed on as it is: no copy
    rb = ReorderBuffer(1 << 16)
    rb.add(0, payload)
    assert rb.pop_ready()[0] is payload


def test_small_in_order_pieces_cost_about_their_size() -> None:
    """A peer sending one-byte frames in order while the application is slow must not make each byte cost a
    Python object: small pieces are copied out of their frames and joined (the memory a slow sink lets pile up
    is about the bytes themselves), and a few new bytes at the end of a large frame do not pin the frame."""
    rb = ReorderBuffer(1 << 20)
    for i in range(10_000):
        rb.add(i, memoryview(bytearray(16 + 1))[16:])  # as a transport hands them: a view into the frame
    ready = rb.pop_ready()
    assert len(ready) == 1 and len(ready[0]) == 10_000 and isinstance(ready[0], bytearray)
    rb.add(10_000, bytes(65536))
    rb.pop_ready()
    frame = bytearray(20_000)
    rb.add(75_536 - 15_000, memoryview(frame))  # mostly a duplicate: 5000 new bytes of a 20000-byte frame
    (tail,) = rb.pop_ready()
    assert len(tail) == 5000 and not isinstance(tail, memoryview)


def test_out_of_order() -> None:
    rb = ReorderBuffer(100)
    assert rb.add(6, b"ghi") is False
    assert rb.add(3, b"def") is False
    assert rb.buffered == 6
    assert drain(rb) == b""
    assert rb.add(0, b"abc") is True
    assert rb.buffered == 0
    assert drain(rb) == b"abcdefghi"
    assert rb.next_offset == 9


def test_exact_duplicates_are_dropped_and_counted() -> None:
    rb = ReorderBuffer(100)
    rb.add(0, b"abc")
    assert rb.add(0, b"abc") is False  # already delivered
    rb.add(10, b"klm")
    assert rb.add(10, b"klm") is False  # already held
    assert rb.buffered == 3
    assert rb.stats.duplicates == 2
    assert rb.stats.duplicate_bytes == 6
    rb.add(3, b"defghij")
    assert drain(rb) == b"abcdefghijklm"


def test_overlap_with_delivered_prefix_keeps_only_the_new_tail() -> None:
    rb = ReorderBuffer(100)
    rb.add(0, b"abcd")
    assert rb.add(2, b"cdef") is True
    assert drain(rb) == b"abcdef"
    assert rb.stats.duplicates == 0


def test_held_range_overlapping_the_new_prefix_is_trimmed_on_drain() -> None:
    rb = ReorderBuffer(100)
    rb.add(4, b"efgh")  # held
    rb.add(0, b"abcdef")  # covers half of the held range
    assert drain(rb) == b"abcdefgh"
    assert rb.buffered == 0


def test_held_range_wholly_covered_is_a_duplicate_on_drain() -> None:
    rb = ReorderBuffer(100)
    rb.add(2, b"cd")
    rb.add(0, b"abcdef")
    assert drain(rb) == b"abcdef"
    assert rb.buffered == 0 and rb.stats.duplicates == 1 and rb.stats.duplicate_bytes == 2


def test_longer_copy_at_same_offset_replaces_the_held_one() -> None:
    rb = ReorderBuffer(100)
    rb.add(5, b"fg")
    rb.add(5, b"fghij")
    assert rb.buffered == 5
    rb.add(5, b"fgh")  # shorter copy: dropped
    assert rb.buffered == 5 and rb.stats.duplicates == 1
    rb.add(0, b"abcde")
    assert drain(rb) == b"abcdefghij"


def test_overlapping_held_ranges() -> None:
    rb = ReorderBuffer(100)
    rb.add(10, b"KLMNOPQRST")  # 10..20
    rb.add(15, b"PQRSTUVWXY")  # 15..25 overlaps the first
    rb.add(12, b"MN")  # inside the first
    rb.add(0, b"ABCDEFGHIJ")
    assert drain(rb) == b"ABCDEFGHIJKLMNOPQRSTUVWXY"
    assert rb.buffered == 0


def test_window_violation() -> None:
    rb = ReorderBuffer(10)
    rb.add(5, b"fghij")  # ends exactly at the window edge: fine
    with pytest.raises(RemoteProtocolError, match="window"):
        rb.add(6, b"ghijk")  # ends at 11
    with pytest.raises(RemoteProtocolError, match="window"):
        rb.add(10, b"k")


def test_window_is_measured_from_what_the_application_consumed() -> None:
    rb = ReorderBuffer(10)
    rb.add(0, b"0123456789")
    assert drain(rb) == b"0123456789"
    # handed out but not consumed: the window has not moved
    with pytest.raises(RemoteProtocolError):
        rb.add(10, b"a")
    rb.consume(4)
    rb.add(10, b"abcd")
    with pytest.raises(RemoteProtocolError):
        rb.add(14, b"e")
    rb.consume(6)
    rb.add(14, b"efghij")
    assert drain(rb) == b"abcdefghij"


def test_empty_or_negative_range_is_a_protocol_error() -> None:
    rb = ReorderBuffer(10)
    with pytest.raises(RemoteProtocolError):
        rb.add(0, b"")
    with pytest.raises(RemoteProtocolError):
        rb.add(-1, b"x")


def test_consume_more_than_handed_out() -> None:
    rb = ReorderBuffer(10)
    rb.add(0, b"abc")
    with pytest.raises(ValueError):
        rb.consume(1)  # still in the ready list: not handed out yet
    rb.pop_ready()
    rb.consume(3)
    with pytest.raises(ValueError):
        rb.consume(1)


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReorderBuffer(0)
    with pytest.raises(ValueError):
        ReorderBuffer(10, max_ranges=0)


def test_partially_overlapping_held_ranges_inside_the_window_are_accepted() -> None:
    rb = ReorderBuffer(10)
    rb.add(2, b"cdef")  # 2..6
    rb.add(3, b"defghij")  # 3..10: inside the window, but 4 + 7 > 10 held bytes
    rb.add(0, b"ab")
    assert drain(rb) == b"abcdefghij"


# -- the cap on held ranges (wire-format.md: at most 4096 separate out-of-order ranges) ----------------------------


def held_at_the_cap(size: int = 1) -> ReorderBuffer:
    """MAX_HELD_RANGES ranges of `size` bytes at 2, 4, 6, ... (offset 0 missing, a gap after each)."""
    rb = ReorderBuffer(4 * MAX_HELD_RANGES * size + 16)
    for i in range(MAX_HELD_RANGES):
        assert rb.add(2 * size * (i + 1), bytes([i % 256]) * size) is False
    assert rb.held_ranges == MAX_HELD_RANGES
    return rb


def test_cap_is_the_wire_format_rule() -> None:
    assert MAX_HELD_RANGES == 4096
    assert ReorderBuffer(10).max_ranges == MAX_HELD_RANGES


def test_4097th_separate_range_is_a_protocol_error() -> None:
    rb = held_at_the_cap()
    buffered = rb.buffered
    with pytest.raises(RemoteProtocolError, match="4096 separate"):
        rb.add(2 * MAX_HELD_RANGES + 10, b"x")  # beyond the last one
    with pytest.raises(RemoteProtocolError, match="4096 separate"):
        rb.add(3, b"y")  # in a gap
    assert rb.held_ranges == MAX_HELD_RANGES and rb.buffered == buffered  # the refused ranges left no trace


def test_what_adds_no_range_is_accepted_at_the_cap() -> None:
    rb = held_at_the_cap(size=2)  # ranges [4, 6), [8, 10), ...
    assert rb.add(4, b"\x00\x00") is False  # an exact duplicate
    assert rb.add(5, b"\x00") is False  # inside a held range
    assert rb.held_ranges == MAX_HELD_RANGES and rb.stats.duplicates == 2
    # one range covering two held ones and the gap between them replaces them: one range fewer
    assert rb.add(8, b"\x01" * 6) is False
    assert rb.held_ranges == MAX_HELD_RANGES - 1
    rb.add(202, b"\x02" * 2)  # in a gap: the room it made is usable again
    assert rb.held_ranges == MAX_HELD_RANGES
    with pytest.raises(RemoteProtocolError):  # and then the buffer is full again
        rb.add(206, b"\x03" * 2)
    # the missing start arrives: in-order data is never held, and it drains whatever now touches it
    assert rb.add(0, b"\xaa" * 4) is True  # [0, 4) + held [4, 6)
    assert rb.held_ranges == MAX_HELD_RANGES - 1
    assert rb.add(6, b"\xbb" * 2) is True  # [6, 8) + held [8, 14)
    assert rb.held_ranges == MAX_HELD_RANGES - 2
    assert drain(rb) == b"\xaa" * 4 + b"\x00\x00" + b"\xbb\xbb" + b"\x01" * 6
    assert rb.next_offset == 14


def test_longer_copy_at_the_same_offset_replaces_the_held_one_at_the_cap() -> None:
    """Regression: a longer range at a held range's offset used to be stored as a second range (the held one
    plus the new tail), so at the cap a DATA that adds no range was refused."""
    rb = held_at_the_cap(size=2)
    assert rb.add(4, b"\x00" * 3) is False  # [4, 7) covers [4, 6) and part of the gap after it
    assert rb.held_ranges == MAX_HELD_RANGES and rb._held.peekitem(0) == (4, b"\x00" * 3)
    assert rb.buffered == 2 * MAX_HELD_RANGES + 1


def test_smaller_cap() -> None:
    rb = ReorderBuffer(100, max_ranges=2)
    rb.add(10, b"a")
    rb.add(20, b"b")
    with pytest.raises(RemoteProtocolError):
        rb.add(30, b"c")
    rb.add(0, b"0123456789")  # drains [10, 11): room for one more
    assert rb.held_ranges == 1
    rb.add(30, b"c")
    assert rb.held_ranges == 2


def test_many_ranges_drain_in_order() -> None:
    """4096 ranges in a random order, then the first: the whole stream comes out in order, in one go."""
    size = 3
    stream = bytes(random.Random(1).randbytes(size * (MAX_HELD_RANGES + 1)))
    chunks = [(o, stream[o : o + size]) for o in range(0, len(stream), size)]
    first, rest = chunks[0], chunks[1:]
    random.Random(2).shuffle(rest)
    rb = ReorderBuffer(len(stream))
    for offset, payload in rest:
        assert rb.add(offset, payload) is False
        assert drain(rb) == b""
    assert rb.held_ranges == MAX_HELD_RANGES and rb.buffered == len(stream) - size
    assert rb.add(*first) is True
    ready = rb.pop_ready()
    assert sum(len(c) for c in ready) == len(stream) and len(ready) < MAX_HELD_RANGES  # small pieces joined
    assert b"".join(bytes(c) for c in ready) == stream
    assert rb.held_ranges == 0 and rb.buffered == 0 and rb.next_offset == len(stream)


def test_honest_sender_never_reaches_the_cap() -> None:
    """A sender with at most 4096 chunks beyond the acknowledged point, resending with the same boundaries, never
    makes the receiver hold more than 4095 ranges (the one holding the others back is missing)."""
    rnd = random.Random(3)
    n = 3 * MAX_HELD_RANGES
    rb = ReorderBuffer(n)
    delivered = 0
    pending: list[int] = []  # chunk offsets sent but not delivered, 1 byte each
    next_chunk = 0
    while delivered < n:
        while next_chunk < n and len(pending) < MAX_HELD_RANGES:  # the sender's cap
            pending.append(next_chunk)
            next_chunk += 1
        # the oldest chunk is "lost" on a slow path until the others have all arrived
        for off in pending[1:]:
            rb.add(off, b"x")
            if rnd.random() < 0.05:
                rb.add(off, b"x")  # a resend
        assert rb.held_ranges <= MAX_HELD_RANGES - 1
        rb.add(pending[0], b"x")
        got = sum(len(c) for c in rb.pop_ready())
        rb.consume(got)
        delivered += got
        pending = [o for o in pending if o >= delivered]
    assert rb.stats.peak_ranges == MAX_HELD_RANGES - 1


# -- what a held range costs ----------------------------------------------------------------------------------------


def test_small_held_payloads_are_copied_out_of_their_frame() -> None:
    """A tiny range must not keep its whole receive buffer alive: below 4 KiB a held payload is copied."""
    frame_buffer = bytearray(b"\x07" * 65536)  # what a transport read one frame into
    small = memoryview(frame_buffer)[16:116]
    rb = ReorderBuffer(1 << 20)
    rb.add(1000, small)
    held = rb._held[1000]
    assert isinstance(held, bytes) and held == bytes(small)
    frame_buffer[16] = 0  # the receive buffer is reused: the held copy does not change
    big = memoryview(frame_buffer)[16 : 16 + 40000]
    rb.add(100_000, big)
    assert rb._held[100_000] is big  # a big payload (most of its frame) is held as it is: no copy
    rb.add(0, b"\x01" * 1000)
    out = drain(rb)
    assert out == b"\x01" * 1000 + b"\x07" * 100


def test_trimmed_remainder_below_the_threshold_is_copied() -> None:
    rb = ReorderBuffer(1 << 20)
    rb.add(100, b"a" * 5000)  # held as it is
    payload = memoryview(bytearray(b"b" * 5000))
    rb.add(2000, payload)  # overlaps: only [5100, 7000) is new, 1900 bytes: copied
    assert isinstance(rb._held[5100], bytes) and len(rb._held[5100]) == 1900


def test_large_in_order_payloads_are_never_copied() -> None:
    payload = memoryview(bytearray(b"z" * 65536))
    rb = ReorderBuffer(1 << 20)
    rb.add(0, payload)
    assert rb.pop_ready()[0] is payload


def test_peak_statistics() -> None:
    rb = ReorderBuffer(1 << 20)
    assert (rb.stats.peak_ranges, rb.stats.peak_cost, rb.held_cost) == (0, 0, 0)
    rb.add(0, b"in order")  # never held: no peak
    assert (rb.stats.peak_ranges, rb.stats.peak_cost) == (0, 0)
    for i in range(10):
        rb.add(100 + 20 * i, b"q" * 10)
    assert rb.held_ranges == 10 and rb.buffered == 100
    assert rb.held_cost == 100 + 10 * RANGE_COST
    assert rb.stats.peak_ranges == 10 and rb.stats.peak_cost == 100 + 10 * RANGE_COST
    rb.add(100, b"Q" * 200)  # covers all ten: one range of 200 bytes
    assert rb.held_ranges == 1 and rb.held_cost == 200 + RANGE_COST
    assert rb.stats.peak_ranges == 10 and rb.stats.peak_cost == 100 + 10 * RANGE_COST  # peaks stay
    rb.add(8, b"f" * 92)  # fills the gap: everything drains
    assert rb.held_ranges == 0 and rb.held_cost == 0
    assert rb.stats.peak_buffered >= 200
    assert drain(rb) == b"in order" + b"f" * 92 + b"Q" * 200


def test_memory_bound_of_a_full_buffer() -> None:
    """At the cap, held_cost is payload plus the bookkeeping of 4096 ranges, bounded by window + cap x cost."""
    rb = held_at_the_cap(size=1)
    assert rb.held_cost == MAX_HELD_RANGES * (1 + RANGE_COST)
    assert rb.held_cost <= rb.window + rb.max_ranges * RANGE_COST
    assert rb.stats.peak_cost == rb.held_cost and rb.stats.peak_ranges == MAX_HELD_RANGES


# -- properties --------------------------------------------------------------------------------------------------


@st.composite
def chunked_stream(draw, max_len: int = 4000):
    stream = draw(st.binary(min_size=1, max_size=max_len))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=60)))) if len(stream) > 1 else []
    bounds = [0, *cuts, len(stream)]
    chunks = [(a, stream[a:b]) for a, b in pairwise(bounds)]
    return stream, chunks


@settings(max_examples=150, deadline=None)
@given(chunked_stream(), st.randoms(use_true_random=False), st.integers(0, 30))
def test_any_permutation_with_duplicates_gives_the_stream(sc, rnd: random.Random, ndup: int) -> None:
    stream, chunks = sc
    deliveries = chunks + [rnd.choice(chunks) for _ in range(ndup)]
    rnd.shuffle(deliveries)
    window = len(stream)
    rb = ReorderBuffer(window)
    out = bytearray()
    for offset, payload in deliveries:
        produced = rb.add(offset, payload)
        ready = rb.pop_ready()
        assert produced == bool(ready)
        for c in ready:
            out += c
        assert rb.buffered <= window
        assert rb.buffered + rb.unconsumed <= window
    assert bytes(out) == stream
    assert rb.buffered == 0 and rb.next_offset == len(stream)
    assert rb.stats.peak_buffered <= window


@settings(max_examples=150, deadline=None)
@given(chunked_stream(), st.randoms(use_true_random=False), st.integers(1, 2000), st.integers(0, 30))
def test_window_respecting_sender_never_overflows(sc, rnd: random.Random, window: int, ndup: int) -> None:
    """A sender that only sends ranges ending within consumed + window (what Session does), in any order, with
    duplicates, and a reader that consumes at random moments: never an error, buffered <= window throughout."""
    stream, chunks = sc
    window = max(window, max(len(p) for _, p in chunks))
    rb = ReorderBuffer(window)
    pending = list(chunks)
    sent: list[tuple[int, bytes]] = []
    out = bytearray()
    handed = 0
    while len(out) < len(stream):
        eligible = [c for c in pending if c[0] + len(c[1]) <= rb.consumed + window]
        resend = [c for c in sent if c[0] + len(c[1]) <= rb.consumed + window]
        if eligible and (not resend or rnd.random() < 0.8 or ndup == 0):
            c = rnd.choice(eligible)
            pending.remove(c)
            sent.append(c)
        elif resend and ndup:
            ndup -= 1
            c = rnd.choice(resend)
        else:
            c = None
        if c is not None:
            rb.add(*c)
            assert rb.buffered <= window
        for r in rb.pop_ready():
            out += r
            handed += len(r)
        if handed > rb.consumed and (c is None or rnd.random() < 0.5):
            rb.consume(rnd.randint(1, handed - rb.consumed))
        assert rb.buffered + rb.unconsumed <= window
    assert bytes(out) == stream


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.data())
def test_arbitrary_overlapping_ranges(stream: bytes, data) -> None:
    """Ranges of any size and position (partial overlaps of every kind) that together cover the stream."""
    n = len(stream)
    extra = data.draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, n)), max_size=25).map(
            lambda xs: [(a, min(n, a + ln)) for a, ln in xs]
        )
    )
    cover = []
    pos = 0
    while pos < n:
        end = min(n, pos + data.draw(st.integers(1, 64)))
        cover.append((pos, end))
        pos = end
    ranges = cover + extra
    order = data.draw(st.permutations(ranges))
    total = sum(b - a for a, b in ranges)
    rb = ReorderBuffer(max(total, n))  # room for every copy: overlap accounting never trips
    out = bytearray()
    for a, b in order:
        rb.add(a, memoryview(stream)[a:b])
        for r in rb.pop_ready():
            out += r
    assert bytes(out) == stream
    assert rb.buffered == 0

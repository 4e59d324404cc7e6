"""ReorderBuffer: ranges in any order, duplicates and overlaps in, the exact stream out, memory bounded."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sctpbond.errors import RemoteProtocolError
from sctpbond.proto.reorder import ReorderBuffer


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
    assert [bytes(c) for c in ready] == [b"abc", b"def"]
    assert rb.next_offset == 6 and rb.unconsumed == 6
    assert rb.pop_ready() == []


def test_fast_path_hands_out_the_callers_object() -> None:
    payload = bytearray(b"xyz")
    rb = ReorderBuffer(10)
    rb.add(0, payload)
    assert rb.pop_ready()[0] is payload  # no copy


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


def test_partially_overlapping_held_ranges_inside_the_window_are_accepted() -> None:
    rb = ReorderBuffer(10)
    rb.add(2, b"cdef")  # 2..6
    rb.add(3, b"defghij")  # 3..10: inside the window, but 4 + 7 > 10 held bytes
    rb.add(0, b"ab")
    assert drain(rb) == b"abcdefghij"


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

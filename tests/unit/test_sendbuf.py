"""SendBuffer: capped application writes, chunking, cumulative ACKs, putting a dead path's chunks back."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sctpbond.errors import LocalProtocolError, RemoteProtocolError
from sctpbond.proto.frames import MAX_HELD_RANGES
from sctpbond.proto.sendbuf import SendBuffer


def offsets(sb: SendBuffer) -> list[tuple[int, int]]:
    return [(c.offset, c.end) for c in sb.iter_unacked()]


def test_cap_and_back_pressure() -> None:
    sb = SendBuffer(10)
    assert sb.space() == 10
    sb.write(b"abcdef")
    assert sb.space() == 4
    with pytest.raises(LocalProtocolError, match="exceeds free space"):
        sb.write(b"12345")
    assert sb.written == 6  # the refused write changed nothing
    sb.write(b"1234")
    assert sb.space() == 0
    with pytest.raises(LocalProtocolError):
        sb.write(b"x")
    sb.write(b"")  # an empty write always fits
    # sending does not free space; only the peer's ACK does
    sb.take_new(100, path=0)
    sb.take_new(100, path=0)
    assert sb.space() == 0
    assert sb.on_ack(4) == 4
    assert sb.space() == 4
    sb.write(b"wxyz")


def test_write_after_close() -> None:
    sb = SendBuffer(10)
    sb.write(b"ab")
    sb.close()
    with pytest.raises(LocalProtocolError, match="after close"):
        sb.write(b"c")


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SendBuffer(0)


def test_take_new_slicing() -> None:
    sb = SendBuffer(100)
    assert sb.take_new(10, path=0) is None  # nothing written
    sb.write(b"abcdef")
    sb.write(bytearray(b"gh"))
    sb.write(memoryview(b"ijklmnop"))
    assert sb.take_new(0, path=0) is None
    assert sb.unsent == 16
    c1 = sb.take_new(4, path=1)  # cut from the head write
    assert (c1.offset, bytes(c1.data), c1.path, c1.sends) == (0, b"abcd", 1, 1)
    c2 = sb.take_new(4, path=2)  # small leftovers of several writes are joined into one chunk
    assert (c2.offset, bytes(c2.data), c2.path) == (4, b"efgh", 2)
    c3 = sb.take_new(3, path=1)
    assert (c3.offset, bytes(c3.data)) == (8, b"ijk")
    c4 = sb.take_new(100, path=2)  # the last write, whole
    assert (c4.offset, bytes(c4.data), c4.end) == (11, b"lmnop", 16)
    assert sb.take_new(100, path=1) is None
    assert sb.unsent == 0 and sb.sent_offset == 16 and sb.in_flight == 16
    assert [(c.offset, c.end) for c in sb.iter_unacked()] == [(0, 4), (4, 8), (8, 11), (11, 16)]


def test_take_new_joins_small_writes_up_to_maxlen() -> None:
    sb = SendBuffer(100)
    for piece in (b"ab", b"cd", b"efg", b"hijk"):
        sb.write(piece)
    c = sb.take_new(6, path=0)  # ab + cd + ef|g: the third write is split
    assert (c.offset, bytes(c.data)) == (0, b"abcdef")
    c = sb.take_new(6, path=0)  # g + hijk: what is left
    assert (c.offset, bytes(c.data)) == (6, b"ghijk")
    assert sb.take_new(6, path=0) is None


def test_take_new_does_not_copy() -> None:
    data = bytearray(b"0123456789")
    sb = SendBuffer(100)
    sb.write(data)
    chunk = sb.take_new(4, path=0)
    data[0:1] = b"X"  # the buffer holds a view of the caller's data (caller must not modify it; shows no copy)
    assert bytes(chunk.data) == b"X123"


def test_multibyte_memoryview_is_counted_in_bytes() -> None:
    import array

    sb = SendBuffer(100)
    arr = array.array("I", [1, 2, 3])  # 12 bytes, itemsize 4
    sb.write(memoryview(arr).cast("B"))
    assert sb.written == 12
    assert len(sb.take_new(5, path=0).data) == 5


def test_on_ack_trims_whole_chunks_only() -> None:
    sb = SendBuffer(100)
    sb.write(b"x" * 30)
    for _ in range(3):
        sb.take_new(10, path=0)
    assert sb.on_ack(15) == 15  # first chunk freed, second half acked: kept
    assert offsets(sb) == [(10, 20), (20, 30)]
    assert sb.acked == 15 and sb.in_flight == 15
    assert sb.on_ack(12) == 0  # stale (ACKs race over different paths)
    assert sb.on_ack(15) == 0
    assert sb.acked == 15
    assert sb.on_ack(30) == 15
    assert offsets(sb) == []
    assert not sb.all_acked  # not closed yet
    sb.close()
    assert sb.all_acked


def test_ack_beyond_sent_is_a_protocol_error() -> None:
    sb = SendBuffer(100)
    sb.write(b"x" * 30)
    sb.take_new(10, path=0)
    with pytest.raises(RemoteProtocolError, match="only 10 were sent"):
        sb.on_ack(11)  # written but never sent still counts as beyond
    assert sb.acked == 0
    assert sb.on_ack(10) == 10


def test_requeue_path_and_take_resend_lowest_offset_first() -> None:
    sb = SendBuffer(1000)
    sb.write(b"".join(bytes([i]) * 10 for i in range(8)))
    # chunks alternate over paths 1 and 2, path 1 carries offsets 0, 20, 40, 60
    for i in range(8):
        sb.take_new(10, path=1 + i % 2)
    assert not sb.resend_pending
    assert sb.requeue_path(1) == 40
    assert sb.requeue_path(1) == 0  # already queued: not twice
    assert sb.resend_pending
    got = []
    while (c := sb.take_resend(path=3)) is not None:
        got.append((c.offset, c.path, c.sends, bytes(c.data)))
    assert got == [(o, 3, 2, bytes([o // 10]) * 10) for o in (0, 20, 40, 60)]
    assert not sb.resend_pending
    # they are now path 3's: path 1 dying again requeues nothing; path 3 dying requeues them
    assert sb.requeue_path(1) == 0
    assert sb.requeue_path(3) == 40


def test_requeue_order_is_by_offset_not_by_death_order() -> None:
    sb = SendBuffer(1000)
    sb.write(b"z" * 60)
    for p in (2, 2, 1, 1, 2, 1):
        sb.take_new(10, path=p)
    sb.requeue_path(1)  # offsets 20, 30, 50
    sb.requeue_path(2)  # offsets 0, 10, 40
    order = []
    while (c := sb.take_resend(path=9)) is not None:
        order.append(c.offset)
    assert order == [0, 10, 20, 30, 40, 50]


def test_take_resend_skips_what_was_acked_meanwhile() -> None:
    sb = SendBuffer(1000)
    sb.write(b"q" * 40)
    for _ in range(4):
        sb.take_new(10, path=1)
    assert sb.requeue_path(1) == 40
    sb.on_ack(25)  # chunks 0 and 10 freed; chunk 20 partly acked stays
    c = sb.take_resend(path=2)
    assert (c.offset, c.path) == (20, 2)
    assert sb.take_resend(path=2).offset == 30
    assert sb.take_resend(path=2) is None


def test_requeue_unknown_path() -> None:
    sb = SendBuffer(10)
    sb.write(b"ab")
    sb.take_new(2, path=0)
    assert sb.requeue_path(7) == 0
    assert sb.take_resend(path=0) is None


def test_at_most_4096_chunks_beyond_the_acknowledgement() -> None:
    """The receiver may hold no more than 4096 separate ranges (wire-format.md), so the sender never has more than
    4096 chunks unacknowledged, whatever their size and however much window is left."""
    assert MAX_HELD_RANGES == 4096
    sb = SendBuffer(1 << 20)
    sb.write(b"s" * 10_000)
    for i in range(MAX_HELD_RANGES):
        chunk = sb.take_new(1, path=i % 3)
        assert chunk is not None and chunk.offset == i
    assert sb.take_new(1, path=0) is None  # the 4097th waits, though bytes, space and maxlen allow it
    assert sb.take_new(100_000, path=1) is None
    assert sb.unsent == 10_000 - MAX_HELD_RANGES
    assert sb.on_ack(0) == 0 and sb.take_new(1, path=0) is None  # a stale ACK frees nothing
    assert sb.on_ack(2) == 2  # two chunks acknowledged: two more may go
    assert sb.take_new(1, path=0).offset == MAX_HELD_RANGES
    assert sb.take_new(1, path=0).offset == MAX_HELD_RANGES + 1
    assert sb.take_new(1, path=0) is None
    assert len(list(sb.iter_unacked())) == MAX_HELD_RANGES


def test_a_partly_acknowledged_chunk_still_counts() -> None:
    sb = SendBuffer(1 << 20)
    sb.write(b"p" * (2 * (MAX_HELD_RANGES + 1)))
    for _ in range(MAX_HELD_RANGES):
        sb.take_new(2, path=0)
    assert sb.on_ack(1) == 1  # half of the first chunk: it stays, and so does the count
    assert sb.take_new(2, path=0) is None
    sb.on_ack(2)
    assert sb.take_new(2, path=0) is not None


def test_resends_are_not_held_back_by_the_chunk_cap() -> None:
    """Resends reuse chunks already counted: a path dying at the cap must still get its chunks out elsewhere."""
    sb = SendBuffer(1 << 20)
    sb.write(b"r" * (MAX_HELD_RANGES + 10))
    for i in range(MAX_HELD_RANGES):
        sb.take_new(1, path=i % 2)
    assert sb.take_new(1, path=2) is None
    assert sb.requeue_path(0) == MAX_HELD_RANGES // 2
    resent = []
    while (c := sb.take_resend(path=2)) is not None:
        resent.append(c.offset)
    assert resent == list(range(0, MAX_HELD_RANGES, 2))
    assert len(list(sb.iter_unacked())) == MAX_HELD_RANGES  # the same chunks: no new ones
    assert sb.take_new(1, path=2) is None


def test_joined_small_writes_make_one_chunk_each() -> None:
    """The count is of chunks, not of writes: many small writes joined into one chunk count once."""
    sb = SendBuffer(1 << 20)
    for _ in range(3 * MAX_HELD_RANGES):
        sb.write(b"w")
    for _ in range(MAX_HELD_RANGES):
        assert len(sb.take_new(3, path=0).data) == 3
    assert sb.unsent == 0 and sb.take_new(3, path=0) is None


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_invariants_under_random_operations(data) -> None:
    cap = data.draw(st.integers(1, 200))
    sb = SendBuffer(cap)
    stream = bytearray()
    for _ in range(data.draw(st.integers(1, 60))):
        op = data.draw(st.sampled_from(["write", "take", "ack", "die", "resend"]))
        if op == "write":
            n = data.draw(st.integers(0, sb.space()))
            piece = bytes((len(stream) + i) % 251 for i in range(n))
            sb.write(piece)
            stream += piece
        elif op == "take":
            c = sb.take_new(data.draw(st.integers(1, 50)), path=data.draw(st.integers(0, 2)))
            if c is not None:
                assert bytes(c.data) == stream[c.offset : c.end]
        elif op == "ack":
            sb.on_ack(data.draw(st.integers(0, sb.sent_offset)))
        elif op == "die":
            sb.requeue_path(data.draw(st.integers(0, 2)))
        else:
            c = sb.take_resend(path=data.draw(st.integers(0, 2)))
            if c is not None:
                assert c.end > sb.acked
                assert bytes(c.data) == stream[c.offset : c.end]
        assert 0 <= sb.acked <= sb.sent_offset <= sb.written
        assert sb.space() == cap - (sb.written - sb.acked) >= 0
        chunks = offsets(sb)
        # unacked chunks tile [first chunk start, sent_offset) with no gap, and only the first may start below acked
        for (_, end), (start, _) in pairwise(chunks):
            assert end == start
        if chunks:
            assert chunks[0][0] <= sb.acked < chunks[0][1]
            assert chunks[-1][1] == sb.sent_offset
        else:
            assert sb.acked == sb.sent_offset

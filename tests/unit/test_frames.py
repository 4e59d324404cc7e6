"""Wire codec: golden bytes for every frame type, header validation, stream reassembly, fuzzing.

The golden fixtures are written by hand from the struct layouts documented in sctpbond/proto/frames.py (header
`type u8 | flags u8 | reserved u16 | body length u32`, network byte order), never produced by `encode`, so a
change of the wire format shows up here as a failing byte comparison.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sctpbond.errors import LocalProtocolError, RemoteProtocolError
from sctpbond.proto import frames
from sctpbond.proto.frames import (
    HEADER_SIZE,
    MAX_ADDRS,
    MAX_DIGEST,
    MAX_PATH_COUNTERS,
    MAX_PAYLOAD,
    MAX_REASON,
    Abort,
    AbortCode,
    Ack,
    Auth,
    Data,
    Fin,
    FrameReader,
    FrameType,
    Hello,
    HelloKind,
    Ping,
    Pong,
    Ready,
    Welcome,
    data_prefix,
    decode,
    encode,
    iter_frames,
    parse_header,
)


def h(text: str) -> bytes:
    """Hex literal with free whitespace and '|' separators (for readability of the layouts below)."""
    return bytes.fromhex(text.replace("|", " "))


TOKEN = bytes(range(16))  # 000102..0f
NONCE = b"\xaa" * 16
MAC = b"\x33" * 32

# (frame, exact wire bytes). Each line of hex is one field of the layout.
GOLDEN: list[tuple[str, object, bytes]] = [
    (
        "hello-new-unkeyed",
        Hello(HelloKind.NEW, 0, bytes(16), NONCE, window=64 << 20, max_chunk=256 * 1024),
        h(
            "01 00 0000 00000038"  # HELLO, body 56
            "53435442"  # magic SCTB
            "01"  # version
            "00"  # kind NEW
            "0000"  # flags
            "0000"  # path id
            "0000"  # reserved
            "00000000000000000000000000000000"  # token
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"  # nonce
            "0000000004000000"  # window u64 = 64 MiB
            "00040000"  # max_chunk u32 = 256 KiB
        ),
    ),
    (
        "hello-join-keyed",
        Hello(HelloKind.JOIN, 3, TOKEN, NONCE, window=0x0102030405060708, max_chunk=0xFFFFFFFF, keyed=True),
        h(
            "01 00 0000 00000038"
            "53435442 01"
            "01"  # JOIN
            "0001"  # HELLO_FLAG_KEYED
            "0003"  # path id 3
            "0000"
            "000102030405060708090a0b0c0d0e0f"
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            "0102030405060708"
            "ffffffff"
        ),
    ),
    (
        "welcome-no-addresses",
        Welcome(b"\x11" * 16, b"\x22" * 16, window=1 << 26, max_chunk=65536),
        h(
            "02 00 0000 0000004d"  # WELCOME, body 77
            "11111111111111111111111111111111"  # token
            "22222222222222222222222222222222"  # nonce
            "0000000004000000"  # window
            "00010000"  # max_chunk
            "0000000000000000000000000000000000000000000000000000000000000000"  # mac (zeros: no key)
            "00"  # address count
        ),
    ),
    (
        "welcome-with-addresses",
        Welcome(b"\x11" * 16, b"\x22" * 16, 1 << 26, 262144, MAC, ("10.0.0.1", "fd00::2")),
        h(
            "02 00 0000 0000006f"  # body 77 + 2 * 17 = 111
            "11111111111111111111111111111111"
            "22222222222222222222222222222222"
            "0000000004000000"
            "00040000"
            "3333333333333333333333333333333333333333333333333333333333333333"
            "02"
            "04 | 0a000001 000000000000000000000000"  # IPv4, padded to 16
            "06 | fd000000000000000000000000000002"  # IPv6
        ),
    ),
    (
        "auth",
        Auth(MAC),
        h("03 00 0000 00000020" "3333333333333333333333333333333333333333333333333333333333333333"),
    ),
    ("ready", Ready(), h("04 00 0000 00000000")),
    (
        "data",
        Data(0x0102030405060708, b"hello"),
        h("10 00 0000 0000000d" "0102030405060708" "68656c6c6f"),  # body = offset u64 + 5 bytes
    ),
    ("data-one-byte", Data(0, b"\x00"), h("10 00 0000 00000009 0000000000000000 00")),
    (
        "ack-plain",
        Ack(0),
        h("11 00 0000 0000000a" "0000000000000000" "00" "00"),  # delivered, flags, counter count
    ),
    (
        "ack-fin-counters",
        Ack(1000, ((1, 500), (2, 1 << 32)), fin=True),
        h(
            "11 00 0000 0000001e"  # body 10 + 2 * 10 = 30
            "00000000000003e8"  # delivered 1000
            "01"  # ACK_FLAG_FIN
            "02"  # two counters
            "0001 00000000000001f4"  # path 1: 500
            "0002 0000000100000000"  # path 2: 2**32
        ),
    ),
    ("fin-no-digest", Fin(5), h("12 00 0000 00000009" "0000000000000005" "00")),
    (
        "fin-digest",
        Fin(0xFFFFFFFFFFFFFFFF, b"\xde\xad\xbe\xef"),
        h("12 00 0000 0000000d" "ffffffffffffffff" "04" "deadbeef"),
    ),
    ("ping", Ping(0x1122334455667788), h("13 00 0000 00000008 1122334455667788")),
    ("pong", Pong(1), h("14 00 0000 00000008 0000000000000001")),
    ("abort-empty", Abort(AbortCode.PROTOCOL), h("15 00 0000 00000002 0001")),
    (
        "abort-reason",
        Abort(AbortCode.AUTH, "wrong key"),
        h("15 00 0000 0000000b" "0002" "77726f6e67206b6579"),
    ),
    (
        "abort-utf8",
        Abort(AbortCode.INTEGRITY, "é"),
        h("15 00 0000 00000004" "0008" "c3a9"),
    ),
]


def test_golden_covers_every_frame_type() -> None:
    seen = {FrameType(wire[0]) for _, _, wire in GOLDEN}
    assert seen == set(FrameType) - {FrameType.SEALED}  # sealed frames: golden bytes in test_crypto.py


@pytest.mark.parametrize(("frame", "wire"), [(f, w) for _, f, w in GOLDEN], ids=[n for n, _, _ in GOLDEN])
def test_golden_encode(frame, wire: bytes) -> None:
    assert encode(frame) == wire


@pytest.mark.parametrize(("frame", "wire"), [(f, w) for _, f, w in GOLDEN], ids=[n for n, _, _ in GOLDEN])
def test_golden_decode(frame, wire: bytes) -> None:
    assert decode(wire) == frame
    assert decode(bytearray(wire)) == frame
    assert decode(memoryview(wire)) == frame
    assert list(iter_frames(wire)) == [frame]


@pytest.mark.parametrize(("frame", "wire"), [(f, w) for _, f, w in GOLDEN], ids=[n for n, _, _ in GOLDEN])
def test_golden_header_agrees(frame, wire: bytes) -> None:
    kind, length = parse_header(wire[:HEADER_SIZE])
    assert kind == wire[0]
    assert length == len(wire) - HEADER_SIZE


def test_data_prefix_is_the_data_header() -> None:
    assert data_prefix(0x0102030405060708, 5) == h("10 00 0000 0000000d 0102030405060708")
    assert data_prefix(7, 5) + b"hello" == encode(Data(7, b"hello"))


@pytest.mark.parametrize("size", [0, MAX_PAYLOAD + 1])
def test_data_prefix_rejects_bad_sizes(size: int) -> None:
    with pytest.raises(LocalProtocolError):
        data_prefix(0, size)


def test_decoded_data_payload_is_a_view() -> None:
    wire = bytearray(h("10 00 0000 0000000b 0000000000000009 abcd 0e"))
    frame = decode(wire)
    assert isinstance(frame, Data)
    assert frame.offset == 9 and bytes(frame.payload) == b"\xab\xcd\x0e"
    assert isinstance(frame.payload, memoryview)


def test_abort_unknown_code_decodes_as_protocol() -> None:
    assert decode(h("15 00 0000 00000004 0063 6869")) == Abort(AbortCode.PROTOCOL, "hi")


def test_abort_reason_is_truncated_to_limit() -> None:
    wire = encode(Abort(AbortCode.INTERNAL, "x" * 1000))
    assert len(wire) == HEADER_SIZE + 2 + MAX_REASON
    assert decode(wire) == Abort(AbortCode.INTERNAL, "x" * MAX_REASON)


@pytest.mark.parametrize(
    "frame",
    [
        Ack(0, tuple((i, i) for i in range(MAX_PATH_COUNTERS + 1))),
        Fin(0, b"x" * (MAX_DIGEST + 1)),
        Welcome(bytes(16), bytes(16), 1, 1, addresses=("10.0.0.1",) * (MAX_ADDRS + 1)),
        Data(0, b""),
        "not a frame",
    ],
    ids=["ack-too-many-counters", "fin-digest-too-long", "welcome-too-many-addrs", "data-empty", "garbage"],
)
def test_encode_refuses_what_the_peer_would_reject(frame) -> None:
    with pytest.raises(LocalProtocolError):
        encode(frame)


def test_largest_frames_round_trip() -> None:
    frames_ = [
        Ack(2**64 - 1, tuple((i, 2**64 - 1) for i in range(MAX_PATH_COUNTERS)), True),
        Fin(2**64 - 1, b"d" * MAX_DIGEST),
        Welcome(bytes(16), bytes(16), 2**64 - 1, 2**32 - 1, MAC, tuple(f"10.0.0.{i}" for i in range(MAX_ADDRS))),
        Data(2**64 - 1, b"\x5a" * MAX_PAYLOAD),
    ]
    for frame in frames_:
        assert decode(encode(frame)) == frame


# -- header validation (from the 8 header bytes alone) ---------------------------------------------------------


def header(ftype: int, length: int, flags: int = 0, reserved: int = 0) -> bytes:
    # Hand-packed: type u8 | flags u8 | reserved u16 | length u32, big-endian.
    return (
        ftype.to_bytes(1, "big") + flags.to_bytes(1, "big") + reserved.to_bytes(2, "big") + length.to_bytes(4, "big")
    )


# Limits written out independently of frames.BODY_LIMITS (min, max body length).
EXPECTED_LIMITS = {
    FrameType.HELLO: (56, 56),
    FrameType.WELCOME: (77, 77 + 16 * 17),
    FrameType.AUTH: (32, 32),
    FrameType.READY: (0, 0),
    FrameType.DATA: (9, 8 + (1 << 20)),
    FrameType.ACK: (10, 10 + 64 * 10),
    FrameType.FIN: (9, 9 + 64),
    FrameType.PING: (8, 8),
    FrameType.PONG: (8, 8),
    FrameType.ABORT: (2, 2 + 256),
    # seq u64 + inner frame (8-byte header at least, the largest plain frame at most) + 16-byte GCM tag
    FrameType.SEALED: (8 + 8 + 16, 8 + (8 + 8 + (1 << 20)) + 16),
}


def test_body_limits_match_the_documented_layouts() -> None:
    assert frames.BODY_LIMITS == EXPECTED_LIMITS
    assert frames.MAX_PLAIN_FRAME == 8 + 8 + (1 << 20)
    assert frames.MAX_FRAME == 8 + 8 + frames.MAX_PLAIN_FRAME + 16


@pytest.mark.parametrize("kind", list(FrameType), ids=[k.name for k in FrameType])
def test_header_length_limits(kind: FrameType) -> None:
    lo, hi = EXPECTED_LIMITS[kind]
    assert parse_header(header(kind, lo)) == (kind, lo)
    assert parse_header(header(kind, hi)) == (kind, hi)
    bad = [hi + 1, 0xFFFFFFFF] + ([lo - 1] if lo > 0 else [])
    for length in bad:
        with pytest.raises(RemoteProtocolError):
            parse_header(header(kind, length))
        # The reader refuses as soon as it has the header: it never waits for (or allocates) the body.
        reader = FrameReader()
        with pytest.raises(RemoteProtocolError):
            reader.feed(header(kind, length))
        with pytest.raises(RemoteProtocolError):
            decode(header(kind, length))


@pytest.mark.parametrize("ftype", [0, 5, 15, 22, 255])
def test_unknown_frame_type(ftype: int) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        parse_header(header(ftype, 0))
    with pytest.raises(RemoteProtocolError):
        FrameReader().feed(header(ftype, 8) + bytes(8))


@pytest.mark.parametrize(("flags", "reserved"), [(1, 0), (0x80, 0), (0, 1), (0, 0x8000), (0xFF, 0xFFFF)])
def test_nonzero_flags_or_reserved(flags: int, reserved: int) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_header(header(FrameType.PING, 8, flags, reserved))
    with pytest.raises(RemoteProtocolError):
        decode(header(FrameType.PING, 8, flags, reserved) + bytes(8))
    with pytest.raises(RemoteProtocolError):
        FrameReader().feed(header(FrameType.PING, 8, flags, reserved))


def test_decode_length_must_match_buffer() -> None:
    ping = h("13 00 0000 00000008 1122334455667788")
    for bad in (ping[:-1], ping + b"\x00", ping[:HEADER_SIZE], ping[:3], b""):
        with pytest.raises(RemoteProtocolError):
            decode(bad)


# -- HELLO magic / version, internal lengths ---------------------------------------------------------------------

HELLO_WIRE = {n: w for n, _, w in GOLDEN}["hello-join-keyed"]


def test_hello_bad_magic() -> None:
    wire = HELLO_WIRE[:8] + b"SCTX" + HELLO_WIRE[12:]
    with pytest.raises(RemoteProtocolError, match="magic"):
        decode(wire)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_hello_wrong_version(version: int) -> None:
    wire = HELLO_WIRE[:12] + bytes([version]) + HELLO_WIRE[13:]
    with pytest.raises(RemoteProtocolError, match="version"):
        decode(wire)


def test_hello_unknown_kind() -> None:
    wire = HELLO_WIRE[:13] + b"\x02" + HELLO_WIRE[14:]
    with pytest.raises(RemoteProtocolError):
        decode(wire)


def test_ack_counter_count_mismatch() -> None:
    # count says 2 but only one counter follows; and count 0 with one counter following.
    with pytest.raises(RemoteProtocolError, match="length mismatch"):
        decode(h("11 00 0000 00000014 0000000000000000 00 02 0001 0000000000000001"))
    with pytest.raises(RemoteProtocolError, match="length mismatch"):
        decode(h("11 00 0000 00000014 0000000000000000 00 00 0001 0000000000000001"))
    # a body that is not a whole number of counters
    with pytest.raises(RemoteProtocolError):
        decode(h("11 00 0000 0000000b 0000000000000000 00 00 00"))


def test_ack_unknown_flags() -> None:
    with pytest.raises(RemoteProtocolError, match="flags"):
        decode(h("11 00 0000 0000000a 0000000000000000 02 00"))


def test_welcome_address_count_mismatch() -> None:
    base = (
        "02 00 0000 {len}"
        "11111111111111111111111111111111 22222222222222222222222222222222"
        "0000000004000000 00010000"
        "0000000000000000000000000000000000000000000000000000000000000000"
    )
    one_addr = "04 0a000001 000000000000000000000000"
    # count 2, one address present
    with pytest.raises(RemoteProtocolError, match="length mismatch"):
        decode(h(base.format(len="0000005e") + "02" + one_addr))
    # count 0, one address present
    with pytest.raises(RemoteProtocolError, match="length mismatch"):
        decode(h(base.format(len="0000005e") + "00" + one_addr))
    # unknown address family
    with pytest.raises(RemoteProtocolError, match="family"):
        decode(h(base.format(len="0000005e") + "01" + "05 0a000001 000000000000000000000000"))


def test_fin_digest_length_mismatch() -> None:
    with pytest.raises(RemoteProtocolError, match="digest length"):
        decode(h("12 00 0000 0000000b 0000000000000005 03 dead"))
    with pytest.raises(RemoteProtocolError, match="digest length"):
        decode(h("12 00 0000 0000000b 0000000000000005 01 dead"))


# -- FrameReader -------------------------------------------------------------------------------------------------

addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
b16 = st.binary(min_size=16, max_size=16)

any_frame = st.one_of(
    st.builds(Hello, st.sampled_from(HelloKind), u16, b16, b16, u64, u32, st.booleans()),
    st.builds(
        Welcome, b16, b16, u64, u32, st.binary(min_size=32, max_size=32),
        st.lists(addresses, max_size=MAX_ADDRS).map(tuple),
    ),
    st.builds(Auth, st.binary(min_size=32, max_size=32)),
    st.just(Ready()),
    st.builds(Data, u64, st.binary(min_size=1, max_size=300)),
    st.builds(Ack, u64, st.lists(st.tuples(u16, u64), max_size=MAX_PATH_COUNTERS).map(tuple), st.booleans()),
    st.builds(Fin, u64, st.binary(max_size=MAX_DIGEST)),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Abort, st.sampled_from(AbortCode), st.text(max_size=40)),
)


@given(any_frame)
def test_encode_decode_round_trip(frame) -> None:
    wire = encode(frame)
    assert decode(wire) == frame
    assert parse_header(wire[:HEADER_SIZE]) == (wire[0], len(wire) - HEADER_SIZE)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_frame, max_size=12), st.data())
def test_reader_any_split(frame_list, data) -> None:
    stream = b"".join(encode(f) for f in frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = FrameReader()
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        piece = stream[prev:cut]
        # the buffer type a transport hands over varies; the reader must not care
        got += reader.feed(data.draw(st.sampled_from([bytes, bytearray, memoryview]))(piece))
        prev = cut
    assert got == frame_list
    assert reader.at_boundary()
    assert reader.want() == HEADER_SIZE


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_frame, min_size=1, max_size=8))
def test_reader_exact_reads_following_want(frame_list) -> None:
    """A transport that reads exactly want() bytes each time gets every frame, one feed per header/body."""
    stream = memoryview(b"".join(encode(f) for f in frame_list))
    reader = FrameReader()
    got = []
    pos = 0
    feeds = 0
    while pos < len(stream):
        n = reader.want()
        assert n > 0
        got += reader.feed(stream[pos : pos + n])
        pos += n
        feeds += 1
    assert got == frame_list
    assert feeds == len(frame_list) + sum(1 for f in frame_list if encode(f)[4:8] != b"\0\0\0\0")


def test_want_semantics() -> None:
    reader = FrameReader()
    assert reader.want() == HEADER_SIZE and reader.at_boundary()
    wire = encode(Data(42, b"abcdef"))  # 8 header + 8 offset + 6 payload
    assert reader.feed(wire[:3]) == []
    assert reader.want() == 5 and not reader.at_boundary()
    assert reader.feed(wire[3:8]) == []
    assert reader.want() == 14  # the whole body, known from the header
    assert reader.feed(wire[8:20]) == []
    assert reader.want() == 2
    assert reader.feed(wire[20:]) == [Data(42, b"abcdef")]
    assert reader.want() == HEADER_SIZE and reader.at_boundary()
    # an empty-body frame completes with its header
    assert reader.feed(encode(Ready())) == [Ready()]
    assert reader.want() == HEADER_SIZE
    assert reader.feed(b"") == []


def test_reader_returns_several_frames_from_one_feed() -> None:
    batch = [Ping(1), Ready(), Data(0, b"x"), Pong(2)]
    assert FrameReader().feed(b"".join(encode(f) for f in batch)) == batch


def test_reader_payloads_survive_further_feeds() -> None:
    """DATA payloads are views; feeding more must not corrupt frames already returned."""
    reader = FrameReader()
    first = reader.feed(encode(Data(0, b"A" * 100)) + encode(Data(100, b"B" * 50))[:20])
    reader.feed(b"\xff" * 0)
    second = reader.feed(encode(Data(100, b"B" * 50))[20:])
    assert bytes(first[0].payload) == b"A" * 100
    assert bytes(second[0].payload) == b"B" * 50


def test_iter_frames_truncated_stream() -> None:
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        list(iter_frames(encode(Ping(1)) + encode(Ping(2))[:-1]))


# -- fuzz: garbage in raises RemoteProtocolError, nothing else ---------------------------------------------------

# Bias the fuzzer towards plausible headers so it gets past parse_header and reaches the body decoders.
plausible = st.builds(
    lambda kind, body, extra: header(kind, len(body)) + body + extra,
    st.sampled_from(FrameType),
    st.binary(max_size=400),
    st.binary(max_size=4),
)
def _mutate(frame, pos: int, byte: int) -> bytes:
    wire = encode(frame)
    pos %= len(wire)
    return wire[:pos] + bytes([byte]) + wire[pos + 1 :]


mutated = st.builds(_mutate, any_frame, st.integers(0, 10_000), st.integers(0, 255))
garbage = st.one_of(st.binary(max_size=600), plausible, mutated)


@settings(max_examples=400)
@given(garbage)
def test_decode_fuzz(blob: bytes) -> None:
    try:
        decode(blob)
    except RemoteProtocolError:
        pass


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbage, max_size=5))
def test_reader_fuzz(blobs: list[bytes]) -> None:
    reader = FrameReader()
    try:
        for blob in blobs:
            reader.feed(blob)
    except RemoteProtocolError:
        pass

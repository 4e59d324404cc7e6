"""Wire codec (version 2): golden bytes for every frame type, header validation against the phase's expected
frames, the peer parameter limits, stream reassembly, fuzzing.

The golden fixtures are written by hand from docs/wire-format.md (header `type u8 | flags u8 | reserved u16 |
body length u32`, network byte order), never produced by `encode`, so a change of the wire format shows up here
as a failing byte comparison. SEALED and AUTHED frames have their golden bytes in test_crypto.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sctpbond.errors import LocalProtocolError, RemoteProtocolError
from sctpbond.proto import frames
from sctpbond.proto.frames import (
    ANY,
    DIALLER_READY,
    DIALLER_WELCOME,
    DIGEST_SIZE,
    HEADER_SIZE,
    LISTENER_AUTH,
    LISTENER_HELLO,
    MAX_ADDRS,
    MAX_PATH_COUNTERS,
    MAX_PAYLOAD,
    MAX_REASON,
    SESSION,
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
    check_params,
    data_prefix,
    decode,
    encode,
    encode_parts,
    iter_frames,
    parse_header,
    split_frame,
)


def h(text: str) -> bytes:
    """Hex literal with free whitespace and '|' separators (for readability of the layouts below)."""
    return bytes.fromhex(text.replace("|", " "))


TOKEN = bytes(range(16))  # 000102..0f
NONCE = b"\xaa" * 16
MAC = b"\x33" * 32
DIGEST = bytes(range(0xD0, 0xE0))  # d0d1..df

# (frame, exact wire bytes). Each line of hex is one field of the layout.
GOLDEN: list[tuple[str, object, bytes]] = [
    (
        "hello-new-unkeyed",
        Hello(HelloKind.NEW, 0, bytes(16), NONCE, window=64 << 20, max_chunk=256 * 1024),
        h(
            "01 00 0000 00000038"  # HELLO, body 56
            "53435442"  # magic SCTB
            "02"  # version 2
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
            "53435442 02"
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
        "hello-keyed-encrypt",
        Hello(HelloKind.NEW, 63, bytes(16), NONCE, window=1 << 32, max_chunk=1 << 20, keyed=True, encrypt=True),
        h(
            "01 00 0000 00000038"
            "53435442 02"
            "00"  # NEW
            "0003"  # HELLO_FLAG_KEYED | HELLO_FLAG_ENCRYPT
            "003f"  # path id 63, the highest
            "0000"
            "00000000000000000000000000000000"
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            "0000000100000000"  # window 2**32
            "00100000"  # max chunk 1 MiB
        ),
    ),
    (
        "welcome-no-addresses",
        Welcome(b"\x11" * 16, b"\x22" * 16, window=1 << 26, max_chunk=65536),
        h(
            "02 00 0000 0000002d"  # WELCOME, body 45: no MAC in version 2
            "11111111111111111111111111111111"  # token
            "22222222222222222222222222222222"  # nonce
            "0000000004000000"  # window
            "00010000"  # max_chunk
            "00"  # address count
        ),
    ),
    (
        "welcome-with-addresses",
        Welcome(b"\x11" * 16, b"\x22" * 16, 1 << 26, 262144, ("10.0.0.1", "fd00::2")),
        h(
            "02 00 0000 0000004f"  # body 45 + 2 * 17 = 79
            "11111111111111111111111111111111"
            "22222222222222222222222222222222"
            "0000000004000000"
            "00040000"
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
    (
        "ready-unkeyed",
        Ready(),
        h("04 00 0000 00000020" "0000000000000000000000000000000000000000000000000000000000000000"),
    ),
    (
        "ready-keyed",
        Ready(b"\x44" * 32),
        h("04 00 0000 00000020" "4444444444444444444444444444444444444444444444444444444444444444"),
    ),
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
    (
        "fin",
        Fin(5, DIGEST),
        h("12 00 0000 00000018" "0000000000000005" "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"),  # total, digest: 24 bytes
    ),
    (
        "fin-largest",
        Fin(0xFFFFFFFFFFFFFFFF, b"\xff" * 16),
        h("12 00 0000 00000018" "ffffffffffffffff" "ffffffffffffffffffffffffffffffff"),
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
    # protected frames: golden bytes in test_crypto.py
    assert seen == set(FrameType) - {FrameType.SEALED, FrameType.AUTHED}


def test_version_is_2() -> None:
    assert frames.VERSION == 2 and frames.MAGIC == b"SCTB"
    assert frames.DIGEST_SIZE == 16 and frames.MAC_SIZE == 32 and frames.MAX_HELD_RANGES == 4096
    assert not hasattr(frames, "MAX_DIGEST")  # FIN's digest has one fixed size now


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


@pytest.mark.parametrize(("frame", "wire"), [(f, w) for _, f, w in GOLDEN], ids=[n for n, _, _ in GOLDEN])
def test_golden_encode_parts(frame, wire: bytes) -> None:
    parts = encode_parts(frame)
    assert b"".join(bytes(p) for p in parts) == wire
    assert len(parts) == (2 if isinstance(frame, Data) else 1)


def test_encode_parts_never_copies_a_data_payload() -> None:
    for payload in (b"hello", bytearray(b"x" * 5000), memoryview(b"abcdef")[1:4]):
        parts = encode_parts(Data(42, payload))
        assert parts[1] is payload  # handed to sendmsg as it is
        assert bytes(parts[0]) == data_prefix(42, len(payload))
        assert b"".join(bytes(p) for p in parts) == encode(Data(42, payload))
    with pytest.raises(LocalProtocolError):
        encode_parts(Data(0, b""))


def test_split_frame_gives_the_body_as_a_view() -> None:
    wire = bytearray(encode(Ping(9)))
    kind, body = split_frame(wire)
    assert kind == FrameType.PING and isinstance(body, memoryview) and bytes(body) == wire[8:]
    wire[8] = 0x77  # a view, not a copy
    assert body[0] == 0x77
    for bad in (wire[:-1], wire + b"\0", wire[:7], b""):
        with pytest.raises(RemoteProtocolError):
            split_frame(bad)
    with pytest.raises(RemoteProtocolError, match="expected"):
        split_frame(wire, LISTENER_HELLO)


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
        Fin(0, b"x" * (DIGEST_SIZE + 1)),
        Fin(0, b"x" * (DIGEST_SIZE - 1)),
        Fin(0, b""),
        Welcome(bytes(16), bytes(16), 1, 1, addresses=("10.0.0.1",) * (MAX_ADDRS + 1)),
        Auth(b"\x01" * 31),
        Ready(b"\x01" * 33),
        Data(0, b""),
        "not a frame",
    ],
    ids=["ack-too-many-counters", "fin-digest-too-long", "fin-digest-too-short", "fin-no-digest",
         "welcome-too-many-addrs", "auth-short-mac", "ready-long-mac", "data-empty", "garbage"],
)
def test_encode_refuses_what_the_peer_would_reject(frame) -> None:
    with pytest.raises(LocalProtocolError):
        encode(frame)


def test_largest_frames_round_trip() -> None:
    frames_ = [
        Ack(2**64 - 1, tuple((i, 2**64 - 1) for i in range(MAX_PATH_COUNTERS)), True),
        Fin(2**64 - 1, b"d" * DIGEST_SIZE),
        Welcome(bytes(16), bytes(16), 2**64 - 1, 2**32 - 1, tuple(f"10.0.0.{i}" for i in range(MAX_ADDRS))),
        Ready(MAC),
        Data(2**64 - 1, b"\x5a" * MAX_PAYLOAD),
    ]
    for frame in frames_:
        assert decode(encode(frame)) == frame
    assert len(encode(frames_[2])) == HEADER_SIZE + 45 + MAX_ADDRS * 17


# -- header validation (from the 8 header bytes alone) ---------------------------------------------------------


def header(ftype: int, length: int, flags: int = 0, reserved: int = 0) -> bytes:
    # Hand-packed: type u8 | flags u8 | reserved u16 | length u32, big-endian.
    return (
        ftype.to_bytes(1, "big") + flags.to_bytes(1, "big") + reserved.to_bytes(2, "big") + length.to_bytes(4, "big")
    )


# Limits written out independently of frames.BODY_LIMITS (min, max body length).
EXPECTED_LIMITS = {
    FrameType.HELLO: (56, 56),
    FrameType.WELCOME: (45, 45 + 16 * 17),  # no MAC since version 2
    FrameType.AUTH: (32, 32),
    FrameType.READY: (32, 32),  # mac_s since version 2
    FrameType.DATA: (9, 8 + (1 << 20)),
    FrameType.ACK: (10, 10 + 64 * 10),
    FrameType.FIN: (24, 24),  # total u64 + XXH3-128 digest, mandatory
    FrameType.PING: (8, 8),
    FrameType.PONG: (8, 8),
    FrameType.ABORT: (2, 2 + 256),
    # seq u64 + inner frame (8-byte header at least, the largest plain frame at most) + 16-byte GCM tag
    FrameType.SEALED: (8 + 8 + 16, 8 + (8 + 8 + (1 << 20)) + 16),
    FrameType.AUTHED: (8 + 8 + 16, 8 + (8 + 8 + (1 << 20)) + 16),  # the same layout, inner frame in clear
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


@pytest.mark.parametrize("ftype", [0, 5, 15, 22, 31, 34, 255])
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


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_hello_wrong_version(version: int) -> None:
    """Version 1 peers are refused: their WELCOME/READY layouts and MACs differ."""
    wire = HELLO_WIRE[:12] + bytes([version]) + HELLO_WIRE[13:]
    with pytest.raises(RemoteProtocolError, match="version"):
        decode(wire)


def test_hello_unknown_kind() -> None:
    wire = HELLO_WIRE[:13] + b"\x02" + HELLO_WIRE[14:]
    with pytest.raises(RemoteProtocolError):
        decode(wire)


@pytest.mark.parametrize("flags", [0x0002, 0x0006, 0x0010, 0x0017, 0x8000, 0xFFFF])
def test_hello_invalid_flags(flags: int) -> None:
    """Unknown bits, and encryption asked for without a key, are refused."""
    wire = HELLO_WIRE[:14] + flags.to_bytes(2, "big") + HELLO_WIRE[16:]
    with pytest.raises(RemoteProtocolError, match="flags"):
        decode(wire)


def test_hello_redundant_only_on_new() -> None:
    """The session's mode is set once, by the HELLO that creates it: a JOIN asking for it is refused."""
    wire = HELLO_WIRE[:13] + b"\x01" + (0x0008).to_bytes(2, "big") + HELLO_WIRE[16:]
    with pytest.raises(RemoteProtocolError, match="flags"):
        decode(wire)


@pytest.mark.parametrize("flags", [0x0000, 0x0001, 0x0003, 0x0004, 0x0008, 0x000F])
def test_hello_valid_flags(flags: int) -> None:
    wire = HELLO_WIRE[:13] + b"\x00" + flags.to_bytes(2, "big") + HELLO_WIRE[16:]  # NEW (redundant is NEW only)
    hello = decode(wire)
    assert isinstance(hello, Hello) and hello.flags == flags
    assert encode(hello) == wire


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
    )
    one_addr = "04 0a000001 000000000000000000000000"
    # the well-formed one first, so the cases below differ from it in one field only
    assert decode(h(base.format(len="0000003e") + "01" + one_addr)).addresses == ("10.0.0.1",)
    # count 2, one address present
    with pytest.raises(RemoteProtocolError, match="length mismatch"):
        decode(h(base.format(len="0000003e") + "02" + one_addr))
    # count 0, one address present
    with pytest.raises(RemoteProtocolError, match="length mismatch"):
        decode(h(base.format(len="0000003e") + "00" + one_addr))
    # unknown address family
    with pytest.raises(RemoteProtocolError, match="family"):
        decode(h(base.format(len="0000003e") + "01" + "05 0a000001 000000000000000000000000"))
    # a version 1 WELCOME (77-byte body: a MAC between max chunk and the count) is a malformed version 2 one
    with pytest.raises(RemoteProtocolError):
        decode(h(base.format(len="0000004d") + "00" * 32 + "00"))


def test_fin_has_a_fixed_size() -> None:
    """Version 1 FINs (a digest length byte, 0..64 bytes of digest) are refused from the header alone."""
    for length in (9, 13, 23, 25, 73):
        with pytest.raises(RemoteProtocolError, match="FIN frame body"):
            parse_header(h(f"12 00 0000 {length:08x}"))
    assert decode(h("12 00 0000 00000018" "0000000000000005" + "ab" * 16)) == Fin(5, b"\xab" * 16)


def test_protected_frames_without_a_key_are_refused() -> None:
    """SEALED and AUTHED frames pass the header check (their limits are known) but only proto.crypto opens them."""
    for kind in (FrameType.SEALED, FrameType.AUTHED):
        wire = header(kind, 32) + bytes(32)
        assert parse_header(wire[:HEADER_SIZE]) == (kind, 32)
        with pytest.raises(RemoteProtocolError, match="without a key"):
            decode(wire)
        with pytest.raises(RemoteProtocolError, match="expected"):  # never part of a plain session
            decode(wire, SESSION)


# -- what each side reads in each phase (docs/wire-format.md, "What each side reads, by phase") -------------------

PHASES = {
    "listener-hello": (LISTENER_HELLO, {FrameType.HELLO}),
    "listener-auth": (LISTENER_AUTH, {FrameType.AUTH, FrameType.ABORT}),
    "dialler-welcome": (DIALLER_WELCOME, {FrameType.WELCOME, FrameType.ABORT}),
    "dialler-ready": (DIALLER_READY, {FrameType.READY, FrameType.ABORT}),
    "session": (SESSION, {FrameType.DATA, FrameType.ACK, FrameType.FIN, FrameType.PING, FrameType.PONG,
                          FrameType.ABORT}),
    "any": (ANY, set(FrameType)),
}
GOLDEN_BY_TYPE = {FrameType(w[0]): w for _, _, w in GOLDEN}


@pytest.mark.parametrize("phase", list(PHASES))
def test_phase_sets_match_the_spec(phase: str) -> None:
    expect, documented = PHASES[phase]
    assert expect == documented


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("kind", list(FrameType), ids=[k.name for k in FrameType])
def test_unexpected_frames_are_refused_from_the_header(phase: str, kind: FrameType) -> None:
    expect, _ = PHASES[phase]
    lo, hi = EXPECTED_LIMITS[kind]
    if kind in expect:
        assert parse_header(header(kind, hi), expect) == (kind, hi)
        if kind in GOLDEN_BY_TYPE:
            wire = GOLDEN_BY_TYPE[kind]
            assert decode(wire, expect) == decode(wire)
        return
    for length in (lo, hi):
        with pytest.raises(RemoteProtocolError, match="expected"):
            parse_header(header(kind, length), expect)
        with pytest.raises(RemoteProtocolError, match="expected"):
            split_frame(header(kind, length) + bytes(length), expect)
    if kind in GOLDEN_BY_TYPE:
        with pytest.raises(RemoteProtocolError, match="expected"):
            decode(GOLDEN_BY_TYPE[kind], expect)


def test_expected_type_is_still_held_to_its_limits() -> None:
    with pytest.raises(RemoteProtocolError, match="allowed 56..56"):
        parse_header(header(FrameType.HELLO, 57), LISTENER_HELLO)
    with pytest.raises(RemoteProtocolError, match="non-zero"):
        parse_header(header(FrameType.AUTH, 32, flags=1), LISTENER_AUTH)
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        parse_header(header(99, 8), SESSION)


@pytest.mark.parametrize("phase", ["listener-hello", "listener-auth", "dialler-welcome", "dialler-ready"])
def test_before_ready_no_peer_can_claim_a_big_frame(phase: str) -> None:
    """During the handshake the largest frame a peer can make the other read is a full WELCOME (325 bytes)."""
    expect, _ = PHASES[phase]
    largest = max(EXPECTED_LIMITS[k][1] for k in expect)
    assert HEADER_SIZE + largest <= HEADER_SIZE + 45 + 16 * 17
    with pytest.raises(RemoteProtocolError):
        parse_header(header(FrameType.DATA, MAX_PAYLOAD), expect)
    with pytest.raises(RemoteProtocolError):
        parse_header(header(FrameType.SEALED, EXPECTED_LIMITS[FrameType.SEALED][1]), expect)


# -- peer parameters -------------------------------------------------------------------------------------------

KiB, MiB = 1 << 10, 1 << 20


@pytest.mark.parametrize(("window", "chunk"), [
    (256 * KiB, 64 * KiB),  # the smallest chunk, the smallest window for it
    (4 * MiB, MiB),  # the largest chunk, four of them
    (1 << 32, 64 * KiB),  # the largest window
    (1 << 32, MiB),
    (64 * MiB, 256 * KiB),  # the defaults' neighbourhood
])
def test_check_params_accepts_the_limits(window: int, chunk: int) -> None:
    check_params(window, chunk, "the peer")


@pytest.mark.parametrize(("window", "chunk", "match"), [
    (64 * MiB, 0, "max chunk of 0"),
    (64 * MiB, 1, "max chunk of 1 "),
    (64 * MiB, 64 * KiB - 1, "max chunk"),
    (64 * MiB, MiB + 1, "max chunk"),
    (64 * MiB, 2 * MiB, "max chunk"),
    (64 * MiB, (1 << 32) - 1, "max chunk"),
    (0, 64 * KiB, "window of 0"),
    (256 * KiB - 1, 64 * KiB, "window"),  # fewer than four chunks
    (4 * MiB - 1, MiB, "window"),
    (3 * 64 * KiB, 64 * KiB, "window"),
    ((1 << 32) + 1, 64 * KiB, "window"),
    ((1 << 64) - 1, MiB, "window"),
])
def test_check_params_refuses(window: int, chunk: int, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        check_params(window, chunk, "the listener")
    assert str(info.value).startswith("the listener ")  # says whose parameters are wrong
    assert info.value.abort_code == AbortCode.PROTOCOL


def test_param_limits_are_the_documented_ones() -> None:
    assert (frames.MIN_CHUNK, frames.MAX_CHUNK) == (64 * KiB, MiB)
    assert (frames.MIN_WINDOW_CHUNKS, frames.MAX_WINDOW) == (4, 1 << 32)


# -- FrameReader -------------------------------------------------------------------------------------------------

addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
b16 = st.binary(min_size=16, max_size=16)

b32 = st.binary(min_size=32, max_size=32)

any_frame = st.one_of(
    # flags: none, keyed, or keyed and asking for encryption (encryption without a key is not a valid HELLO)
    st.builds(lambda kind, pid, token, nonce, window, chunk, level: Hello(
        kind, pid, token, nonce, window, chunk, keyed=level > 0, encrypt=level > 1),
        st.sampled_from(HelloKind), u16, b16, b16, u64, u32, st.integers(0, 2)),
    st.builds(Welcome, b16, b16, u64, u32, st.lists(addresses, max_size=MAX_ADDRS).map(tuple)),
    st.builds(Auth, b32),
    st.builds(Ready, b32),
    st.builds(Data, u64, st.binary(min_size=1, max_size=300)),
    st.builds(Ack, u64, st.lists(st.tuples(u16, u64), max_size=MAX_PATH_COUNTERS).map(tuple), st.booleans()),
    st.builds(Fin, u64, st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)),
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
    # no frame type has an empty body any more (READY carries mac_s): every frame takes a header and a body read
    assert min(lo for lo, _ in EXPECTED_LIMITS.values()) > 0
    assert reader.feed(encode(Ready())[:HEADER_SIZE]) == []
    assert reader.want() == 32
    assert reader.feed(encode(Ready())[HEADER_SIZE:]) == [Ready()]
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

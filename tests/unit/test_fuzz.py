"""Fuzzing the parts a stranger reaches before authentication: the frame decoder and the handshake.

Contract under test (docs/security.md): whatever bytes or frames arrive, `decode`, `FrameReader` and the two
handshake objects either return a result or raise a `ProtocolError` subclass (the runtime turns that into one
log line and a closed connection) — never any other exception type — and the reader never buffers more than
the largest frame the header allows. A peer's ABORT frame is the one input that may raise `SessionAborted`
instead (it is the peer saying why it stopped, not a protocol violation).

Three kinds of input: arbitrary bytes, valid frames of every type mutated byte-wise (flip, set, insert, delete,
truncate, duplicate), and handshake-shaped frame sequences in which the strategy sometimes computes the correct
transcript HMAC, so the fuzzer also walks the successful paths and can check that READY and a Negotiated result
never follow a wrong MAC. The handshake objects are fed raw frame bytes through their receive_* methods, each
read limited to the phase's `expect` set, as the transports do.
Runs are bounded (max_examples, no deadline); the atheris harness in tests/fuzz/ runs here for a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sctpbond.errors import (
    AuthError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SessionAborted,
)
from sctpbond.proto.frames import (
    BODY_LIMITS,
    DIALLER_READY,
    DIALLER_WELCOME,
    DIGEST_SIZE,
    HEADER,
    HEADER_SIZE,
    LISTENER_AUTH,
    LISTENER_HELLO,
    MAC_SIZE,
    MAX_ADDRS,
    MAX_FRAME,
    MAX_PATH_COUNTERS,
    MAX_PAYLOAD,
    MAX_REASON,
    Abort,
    AbortCode,
    Ack,
    Auth,
    Data,
    Expect,
    Fin,
    Frame,
    FrameReader,
    FrameType,
    Hello,
    HelloKind,
    Ping,
    Pong,
    Ready,
    Welcome,
    check_params,
    decode,
    encode,
    parse_header,
)
from sctpbond.proto.handshake import ClientHandshake, ServerHandshake, mac, path_keys

REPO = Path(__file__).resolve().parents[2]
KEY = b"fuzzing key \x00\xff with odd bytes"  # at least 16 bytes, as the runtime requires
KNOWN_TOKEN = bytes.fromhex("5a" * 16)
SERVER_NONCE = bytes(range(100, 116))
CLIENT_NONCE = bytes(range(200, 216))
ISSUED_TOKEN = bytes.fromhex("c3" * 16)
FRAME_CLASSES = (Hello, Welcome, Auth, Ready, Data, Ack, Fin, Ping, Pong, Abort)

# Bounded for CI (this whole file runs in about 25 s on one core). SCTPBOND_FUZZ_SCALE=N multiplies the example
# counts and the atheris run time for a deeper run by hand, e.g. SCTPBOND_FUZZ_SCALE=20 (a few minutes).
SCALE = max(1, int(os.environ.get("SCTPBOND_FUZZ_SCALE", "1")))
FUZZ = settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies ---------------------------------------------------------------------------------------------------

u8 = st.integers(0, 255)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
b16 = st.binary(min_size=16, max_size=16)
b32 = st.binary(min_size=32, max_size=32)
addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))

# HELLO flags: none, keyed, or keyed and asking for encryption (encryption without a key is not a valid HELLO)
hellos = st.builds(lambda kind, pid, token, nonce, window, chunk, level: Hello(
    kind, pid, token, nonce, window, chunk, keyed=level > 0, encrypt=level > 1),
    st.sampled_from(HelloKind), u16, b16, b16, u64, u32, st.integers(0, 2))
any_frame = st.one_of(
    hellos,
    st.builds(Welcome, b16, b16, u64, u32, st.lists(addresses, max_size=MAX_ADDRS).map(tuple)),
    st.builds(Auth, b32),
    st.builds(Ready, b32),
    st.builds(Data, u64, st.binary(min_size=1, max_size=200)),
    st.builds(Ack, u64, st.lists(st.tuples(u16, u64), max_size=MAX_PATH_COUNTERS).map(tuple), st.booleans()),
    st.builds(Fin, u64, st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Abort, st.sampled_from(AbortCode), st.text(max_size=60)),
)

# One valid frame of every type, at the small and the large end of its allowed size (the mutation corpus).
CORPUS: list[Frame] = [
    Hello(HelloKind.NEW, 0, bytes(16), CLIENT_NONCE, 64 << 20, 256 << 10),
    Hello(HelloKind.JOIN, 63, KNOWN_TOKEN, CLIENT_NONCE, 2**64 - 1, 2**32 - 1, keyed=True),
    Hello(HelloKind.NEW, 1, bytes(16), CLIENT_NONCE, 1, 1, keyed=True, encrypt=True),
    Welcome(ISSUED_TOKEN, SERVER_NONCE, 1 << 20, 65536),
    Welcome(ISSUED_TOKEN, SERVER_NONCE, 1, 1,
            tuple(f"10.0.{i}.1" if i % 2 else f"fd00::{i + 1}" for i in range(MAX_ADDRS))),
    Auth(b"\x22" * 32),
    Ready(),
    Ready(b"\x44" * 32),
    Data(0, b"x"),
    Data(2**64 - 4097, bytes(range(256)) * 16),
    Ack(0),
    Ack(2**64 - 1, tuple((i, 2**64 - 1 - i) for i in range(MAX_PATH_COUNTERS)), fin=True),
    Fin(0, bytes(DIGEST_SIZE)),
    Fin(12345, b"\xdd" * DIGEST_SIZE),
    Ping(0),
    Pong(2**64 - 1),
    *(Abort(code, f"reason {code.name}") for code in AbortCode),
    Abort(AbortCode.PROTOCOL, "\u00e9" * (MAX_REASON // 2)),
]
# The same as wire bytes, plus a SEALED and an AUTHED frame (only the AEAD layer makes and opens those; outside
# it one is a protocol error): seq u64 | inner header + 8-byte body, "encrypted" or in clear | tag.
SEALED_WIRE = (HEADER.pack(FrameType.SEALED, 0, 0, 8 + 16 + 16) + (7).to_bytes(8, "big") + bytes(range(16))
               + b"\x5e" * 16)
AUTHED_WIRE = (HEADER.pack(FrameType.AUTHED, 0, 0, 8 + 16 + 16) + (8).to_bytes(8, "big") + encode(Ping(3))
               + b"\x6f" * 16)
CORPUS_WIRES: list[bytes] = [encode(f) for f in CORPUS] + [SEALED_WIRE, AUTHED_WIRE]


def _mutate(wire: bytes, ops: list[tuple[int, int, int, bytes]]) -> bytes:
    """Apply byte mutations: (op, position, value, extra bytes); positions wrap around the current length."""
    buf = bytearray(wire)
    for op, pos, value, extra in ops:
        n = len(buf)
        p = pos % (n + 1)
        if op == 0 and n:  # flip one bit
            buf[p % n] ^= 1 << (value % 8)
        elif op == 1 and n:  # set one byte
            buf[p % n] = value
        elif op == 2:  # insert bytes
            buf[p:p] = extra or bytes([value])
        elif op == 3:  # delete a range
            del buf[p : p + 1 + value % 16]
        elif op == 4:  # truncate
            del buf[p:]
        elif op == 5:  # duplicate a slice in place
            buf[p:p] = buf[p : p + 1 + value]
        elif op == 6 and n >= HEADER_SIZE:  # rewrite the header's length field (the classic forged length)
            claims = (n - HEADER_SIZE + value % 5 - 2, value * 0x01010101, 0xFFFFFFFF, MAX_FRAME)
            buf[4:8] = (claims[value % 4] % 2**32).to_bytes(4, "big")
    return bytes(buf)


mutation = st.tuples(st.integers(0, 6), st.integers(0, 1 << 20), u8, st.binary(max_size=8))
mutated_frame = st.builds(
    _mutate,
    st.sampled_from(CORPUS_WIRES) | any_frame.map(encode),
    st.lists(mutation, min_size=1, max_size=4),
)
# A header the decoder will accept, then a body of the wrong size or contents: gets past parse_header.
plausible = st.builds(
    lambda kind, body, extra: HEADER.pack(kind, 0, 0, len(body)) + body + extra,
    st.sampled_from(FrameType), st.binary(max_size=400), st.binary(max_size=4),
)
# Headers alone, every type and flag combination, with lengths at and around the limits and far beyond.
header_only = st.builds(
    lambda kind, flags, resv, length: HEADER.pack(kind, flags, resv, length),
    st.integers(0, 255) | st.sampled_from(FrameType), st.sampled_from([0, 0, 0, 1, 0x80]), st.sampled_from([0, 0, 1]),
    st.one_of(u32, st.sampled_from([MAX_PAYLOAD + 8, MAX_PAYLOAD + 9, MAX_FRAME, 2**31, 2**32 - 1]),
              st.sampled_from(FrameType).map(lambda t: BODY_LIMITS[t][1] + 1)),
)
garbage = st.one_of(st.binary(max_size=700), plausible, mutated_frame, header_only,
                    st.lists(mutated_frame | plausible, max_size=4).map(b"".join))


# -- helpers -------------------------------------------------------------------------------------------------------

def _decode_or_error(blob: bytes) -> Frame | ProtocolError:
    try:
        frame = decode(blob)
    except ProtocolError as exc:
        return exc
    assert isinstance(frame, FRAME_CLASSES)
    return frame


def _check_reader_bounds(reader: FrameReader) -> None:
    """The reader never holds more than the frame its header announced, and never more than MAX_FRAME."""
    buffered = len(reader._buf)
    assert buffered <= MAX_FRAME
    if reader._kind is None:
        assert buffered <= HEADER_SIZE
    else:
        lo, hi = BODY_LIMITS[reader._kind]
        assert lo <= reader._length <= hi  # only a validated length is ever remembered
        assert buffered <= HEADER_SIZE + reader._length
    assert 0 <= reader.want() <= MAX_FRAME


def _read(chunks: list[bytes | bytearray | memoryview]) -> tuple[list[Frame], type | None, bool]:
    """Feed chunks to a fresh reader: (frames completed, exception type or None, at_boundary at the end)."""
    reader = FrameReader()
    frames: list[Frame] = []
    for chunk in chunks:
        try:
            frames += reader.feed(chunk)
        except ProtocolError as exc:
            _check_reader_bounds(reader)
            return frames, type(exc), reader.at_boundary()
        _check_reader_bounds(reader)
    return frames, None, reader.at_boundary()


def _chunk(blob: bytes, cuts: list[int], kinds: list[int]) -> list[bytes | bytearray | memoryview]:
    bounds = sorted({c % (len(blob) + 1) for c in cuts} | {0, len(blob)})
    conv = (bytes, bytearray, memoryview)
    return [conv[kinds[i % len(kinds)] if kinds else 0](blob[a:b]) for i, (a, b) in enumerate(pairwise(bounds))]


def _canon(frames: list[Frame]) -> list[bytes]:
    return [encode(f) for f in frames]


def _over_the_wire(frame: Frame) -> Frame | None:
    """encode -> decode, as every frame travels in the runtime; None for a frame the decoder refuses (a HELLO
    asking for encryption without a key, for instance)."""
    try:
        return decode(encode(frame))
    except RemoteProtocolError:
        return None


# -- the frame decoder ---------------------------------------------------------------------------------------------

@FUZZ
@given(garbage)
def test_decode_any_bytes_gives_a_frame_or_a_protocol_error(blob: bytes) -> None:
    result = _decode_or_error(blob)
    if isinstance(result, ProtocolError):
        assert isinstance(result, RemoteProtocolError)  # the peer's fault, never blamed on us
        assert str(result) and str(result).isprintable()  # one line for the log
        return
    # Accepted: the decoded frame re-encodes to a frame of the same type that decodes to itself, and the
    # fields without a lenient encoding (no free text, padding or ignored bits) come back byte-exact.
    again = encode(result)
    assert again[0] == blob[0]
    if isinstance(result, Abort):  # invalid UTF-8 became U+FFFD (3 bytes), so the reason may now be truncated
        assert decode(again).code == result.code and result.reason.isprintable()
    else:
        assert decode(again) == result
    if isinstance(result, (Data, Auth, Ready, Ack, Fin, Ping, Pong)):
        assert again == blob
    if isinstance(result, Data):  # the payload is a view of the input, never a copy bigger than it
        assert len(result.payload) == len(blob) - 16


@FUZZ
@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE) | header_only)
def test_parse_header_rejects_from_eight_bytes(header: bytes) -> None:
    try:
        kind, length = parse_header(header)
    except ProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError)
        return
    lo, hi = BODY_LIMITS[kind]
    assert lo <= length <= hi <= MAX_FRAME - HEADER_SIZE
    assert header[1:4] == b"\0\0\0"


@FUZZ
@given(garbage, st.lists(st.integers(0, 4096), max_size=12), st.lists(st.integers(0, 2), max_size=4))
def test_reader_same_outcome_in_every_chunking(blob: bytes, cuts: list[int], kinds: list[int]) -> None:
    """Byte at a time, want()-sized reads, one feed, or any split: same frames, same verdict, bounded buffer."""
    reference = _read([blob[i : i + 1] for i in range(len(blob))])
    ref_frames, ref_error, ref_boundary = reference
    for chunks in (_chunk(blob, cuts, kinds), [blob], [memoryview(blob)]):
        frames, error, boundary = _read(chunks)
        assert error == ref_error
        if error is None:
            assert _canon(frames) == _canon(ref_frames) and boundary == ref_boundary
        else:  # a feed that fails drops the frames it completed in the same call: a prefix survives
            assert _canon(frames) == _canon(ref_frames)[: len(frames)]
    # the transport's way: read exactly want() bytes each time
    reader, pos, frames, error = FrameReader(), 0, [], None
    while pos < len(blob):
        n = reader.want()
        try:
            frames += reader.feed(blob[pos : pos + n])
        except ProtocolError as exc:
            error = type(exc)
            break
        _check_reader_bounds(reader)
        pos += n
    assert error == ref_error
    assert _canon(frames) == _canon(ref_frames)
    # every frame the reader produced is what decode() makes of that frame's bytes
    for frame in ref_frames:
        assert decode(encode(frame)) == frame or isinstance(frame, Abort)  # (Abort: see the decode test)


@FUZZ
@given(st.lists(st.sampled_from(CORPUS) | any_frame, min_size=1, max_size=6), st.data())
def test_mutated_frame_streams(frames: list[Frame], data) -> None:
    """A valid stream with one frame mutated: the frames before it arrive intact, the rest is clean or an error."""
    victim = data.draw(st.integers(0, len(frames) - 1))
    wires = [encode(f) for f in frames]
    bad = _mutate(wires[victim], data.draw(st.lists(mutation, min_size=1, max_size=4)))
    stream = b"".join(wires[:victim]) + bad + b"".join(wires[victim + 1 :])
    got, error, _ = _read([stream[i : i + 7] for i in range(0, len(stream), 7)])
    good_prefix = _canon([decode(w) for w in wires[:victim]])
    if error is not None:
        assert issubclass(error, RemoteProtocolError)
    one_by_one, _, _ = _read([stream[i : i + 1] for i in range(len(stream))])
    assert _canon(one_by_one)[:victim] == good_prefix
    assert _canon(got) == _canon(one_by_one)[: len(got)]
    result = _decode_or_error(bad)
    assert isinstance(result, (RemoteProtocolError, *FRAME_CLASSES))


def test_every_frame_type_is_in_the_mutation_corpus() -> None:
    assert {wire[0] for wire in CORPUS_WIRES} == set(FrameType)
    for frame in CORPUS:
        assert decode(encode(frame)) == frame
    for wire in (SEALED_WIRE, AUTHED_WIRE):
        assert parse_header(wire[:HEADER_SIZE]) == (FrameType(wire[0]), len(wire) - HEADER_SIZE)
        with pytest.raises(RemoteProtocolError):  # only proto.crypto opens them, on a keyed path
            decode(wire)


@pytest.mark.parametrize("kind", list(FrameType))
def test_forged_length_allocates_nothing_before_the_body_arrives(kind: FrameType) -> None:
    """A header claiming the largest body its type allows costs the reader only the bytes actually received."""
    hi = BODY_LIMITS[kind][1]
    reader = FrameReader()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        reader.feed(HEADER.pack(kind, 0, 0, hi) + b"\x01" * min(hi - 1, 100) if hi else HEADER.pack(kind, 0, 0, 0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024, f"{kind.name}: {peak} bytes allocated for a {hi}-byte claim"
    _check_reader_bounds(reader)
    with pytest.raises(RemoteProtocolError):  # one byte over the limit is refused from the header alone
        FrameReader().feed(HEADER.pack(kind, 0, 0, hi + 1))


def test_reader_buffer_cap_holds_for_the_largest_frames() -> None:
    """The largest DATA frame and the largest frame of all (SEALED) fill the reader exactly to its cap."""
    step = 65521  # a prime, so chunk edges fall everywhere in the header and body
    biggest_data = encode(Data(0, b"\xab" * MAX_PAYLOAD))
    reader = FrameReader()
    out: list[Frame] = []
    for i in range(0, len(biggest_data) * 2, step):
        out += reader.feed((biggest_data * 2)[i : i + step])
        _check_reader_bounds(reader)
    assert len(out) == 2 and all(len(f.payload) == MAX_PAYLOAD for f in out)
    assert reader.at_boundary()
    hi = BODY_LIMITS[FrameType.SEALED][1]
    sealed = HEADER.pack(FrameType.SEALED, 0, 0, hi) + b"\xcd" * hi
    assert len(sealed) == MAX_FRAME
    reader, peak = FrameReader(), 0
    with pytest.raises(RemoteProtocolError, match="without a key"):  # refused once whole: no key agreed here
        for i in range(0, len(sealed), step):
            reader.feed(sealed[i : i + step])
            _check_reader_bounds(reader)
            peak = max(peak, len(reader._buf))
    assert MAX_FRAME - step <= peak <= MAX_FRAME


# -- the handshake -------------------------------------------------------------------------------------------------

CLIENT_ROLE, SERVER_ROLE = b"sctpbond v2 client", b"sctpbond v2 server"
ADDRS = ("10.0.0.1",)


class Registry:
    def __init__(self) -> None:
        self.issued: list[bytes] = []

    def new_token(self) -> bytes:
        self.issued.append(ISSUED_TOKEN)
        return ISSUED_TOKEN

    @staticmethod
    def knows(token: bytes) -> bool:
        return token == KNOWN_TOKEN


def _server(key: bytes | None) -> tuple[ServerHandshake, Registry]:
    reg = Registry()
    return ServerHandshake(key=key, nonce=SERVER_NONCE, window=1 << 20, max_chunk=65536, new_token=reg.new_token,
                           knows=reg.knows, addresses=ADDRS), reg


def _client(key: bytes | None, kind: HelloKind, path_id: int) -> ClientHandshake:
    token = KNOWN_TOKEN if kind == HelloKind.JOIN else bytes(16)
    return ClientHandshake(key=key, kind=kind, token=token, path_id=path_id, nonce=CLIENT_NONCE, window=1 << 20,
                           max_chunk=65536)


def _proof(key: bytes | None, role: bytes, transcript: bytes) -> bytes:
    return mac(key, role, transcript) if key is not None else bytes(MAC_SIZE)


def _kind_of(raw: bytes) -> FrameType | None:
    try:
        return FrameType(raw[0]) if raw else None
    except ValueError:
        return None


def _check_error(exc: BaseException, raw: bytes) -> None:
    """The only exceptions a handshake may raise on peer input, each saying what to tell the peer."""
    if isinstance(exc, (AuthError, SessionAborted)) and exc.from_peer:
        assert _kind_of(raw) == FrameType.ABORT, f"a peer's ABORT without an ABORT frame: {exc}"
        assert str(exc) and str(exc).isprintable()
        return
    assert isinstance(exc, ProtocolError), f"{type(exc).__name__}: {exc}"
    assert not isinstance(exc, LocalProtocolError), f"our own fault on peer input: {exc}"
    assert str(exc) and str(exc).isprintable()  # one log line, no terminal control
    code = AbortCode(exc.abort_code)  # the ABORT to send back is always a valid one
    assert exc.peer_reason and exc.peer_reason.isprintable()
    if isinstance(exc, AuthError):
        assert code in (AbortCode.AUTH, AbortCode.UNKNOWN_SESSION), code
    else:
        assert isinstance(exc, RemoteProtocolError) and code in (AbortCode.PROTOCOL, AbortCode.TOO_MANY_PATHS), code


def _next_frame(buf: bytes, pos: int, expect) -> tuple[bytes | None, int]:
    """The transports' way to read a handshake frame: the header against `expect` first, then exactly its body.
    RemoteProtocolError from the header; (None, pos) when the stream ends before the frame does."""
    if len(buf) - pos < HEADER_SIZE:
        return None, pos
    kind, length = parse_header(buf[pos : pos + HEADER_SIZE], expect)
    assert kind in expect and length <= 45 + 17 * MAX_ADDRS  # never more than a full WELCOME before READY
    end = pos + HEADER_SIZE + length
    return (buf[pos:end], end) if end <= len(buf) else (None, pos)


def test_peer_abort_reason_cannot_forge_log_lines() -> None:
    """Regression (found by this file): a peer's ABORT reason went verbatim into the exception, and so into the
    listener's "rejected connection" line or the user's error line: a newline forged a second log line, an escape
    sequence reached the terminal. Reasons are now made printable when an Abort is built (decoded or local)."""
    evil = "x\nsctpbond: rejected connection from 10.0.0.9:1: forged\x1b[2J\r\u202e"
    wire = HEADER.pack(FrameType.ABORT, 0, 0, 2 + len(evil.encode())) + b"\x00\x02" + evil.encode()
    frame = decode(wire)
    assert isinstance(frame, Abort) and frame.reason.isprintable()
    assert frame.reason.startswith("x\ufffdsctpbond: rejected") and "\x1b" not in frame.reason
    assert Abort(AbortCode.PROTOCOL, "a\nb").reason == "a\ufffdb" and Abort(AbortCode.AUTH, "fine").reason == "fine"
    for code in (AbortCode.AUTH, AbortCode.BUSY):
        bad = HEADER.pack(FrameType.ABORT, 0, 0, 2 + len(evil.encode())) + code.to_bytes(2, "big") + evil.encode()
        server, _ = _server(None)
        server.receive_hello(_client(None, HelloKind.NEW, 0).hello())
        server.welcome()
        ready_client = _client(None, HelloKind.NEW, 0)
        ready_client.receive_welcome(_after_hello(ready_client, None))
        welcome_client = _client(None, HelloKind.NEW, 0)
        welcome_client.hello()
        for receive in (server.receive_auth, welcome_client.receive_welcome, ready_client.receive_ready):
            with pytest.raises((AuthError, SessionAborted)) as info:
                receive(bad)
            assert info.value.from_peer
            assert str(info.value).isprintable() and "\n" not in str(info.value)


def _after_hello(client: ClientHandshake, key: bytes | None) -> bytes:
    """Send the client's HELLO to a fresh listener; return that listener's WELCOME."""
    server, _ = _server(key)
    server.receive_hello(client.hello())
    return server.welcome()


# (window, max chunk) pairs at and around the limits: 64 KiB..1 MiB chunks, windows of 4 chunks..4 GiB
GOOD_PARAMS = [(1 << 18, 1 << 16), (1 << 20, 1 << 16), (1 << 32, 1 << 16), (4 << 20, 1 << 20), (1 << 32, 1 << 20)]
BAD_PARAMS = [(0, 1 << 16), (1 << 20, 0), (1 << 20, 1), ((1 << 18) - 1, 1 << 16), ((1 << 32) + 1, 1 << 16),
              (1 << 22, (1 << 20) + 1), (1 << 20, 1 << 20)]
params = st.sampled_from(GOOD_PARAMS) | st.sampled_from(BAD_PARAMS) | st.tuples(u64, u32)


def _hello_input(key: bytes | None):
    """HELLOs a hostile or confused dialler might send: every kind, flag combination and parameter range, and
    often one this listener accepts (so the fuzzer gets to the AUTH phase)."""
    keyed = key is not None
    plausible = st.builds(
        lambda kind, pid, wc: Hello(kind, pid, KNOWN_TOKEN if kind == HelloKind.JOIN else bytes(16), CLIENT_NONCE,
                                    *wc, keyed=keyed, encrypt=keyed),
        st.sampled_from(HelloKind), st.sampled_from([0, 1, 63]), st.sampled_from(GOOD_PARAMS))
    anything = st.builds(
        lambda kind, pid, token, nonce, wc, keyed, encrypt: Hello(kind, pid, token, nonce, *wc, keyed=keyed,
                                                                  encrypt=encrypt),
        st.sampled_from(HelloKind), st.sampled_from([0, 1, 63, 64, 65535]) | u16,
        st.sampled_from([bytes(16), KNOWN_TOKEN, ISSUED_TOKEN]) | b16, st.just(CLIENT_NONCE) | b16, params,
        st.just(keyed) | st.booleans(), st.just(keyed) | st.booleans())
    return (plausible | anything).map(encode)


def _raw_input(extra):
    """Raw frame bytes: the phase's plausible frames (most of the time), or anything else (any frame, mutated
    frames, garbage)."""
    return st.one_of(extra, extra, extra, any_frame.map(encode), mutated_frame, st.binary(max_size=80))


@FUZZ
@given(st.sampled_from([None, KEY]), st.data())
def test_server_handshake_any_frame_sequence(key: bytes | None, data) -> None:
    server, reg = _server(key)
    hello_raw = welcome_raw = b""
    for _ in range(data.draw(st.integers(1, 6), label="frames")):
        if server.expect == LISTENER_HELLO:
            raw = data.draw(_raw_input(_hello_input(key)), label="hello")
            try:
                hello = server.receive_hello(raw)
            except Exception as exc:  # noqa: BLE001 - the point is to catch everything
                _check_error(exc, raw)
                assert server.hello is None and server.expect == LISTENER_HELLO
                continue
            # accepted: a valid HELLO that fits this listener, and it may now say WELCOME
            event("listener accepted a HELLO")
            assert decode(raw) == hello and _kind_of(raw) == FrameType.HELLO
            assert hello.keyed == (key is not None) and (hello.encrypt or key is None)
            assert hello.path_id < 64
            check_params(hello.window, hello.max_chunk, "fuzz")
            hello_raw, welcome_raw = raw, server.welcome()
            token = KNOWN_TOKEN if hello.kind == HelloKind.JOIN else ISSUED_TOKEN
            assert hello.kind == HelloKind.NEW or reg.issued == []  # a JOIN only ever names a known session
            # nothing in WELCOME depends on the key: exactly the fields, no MAC
            assert welcome_raw == encode(Welcome(token, SERVER_NONCE, 1 << 20, 65536, ADDRS))
            with pytest.raises(LocalProtocolError):
                server.ready()
            continue
        assert server.expect == LISTENER_AUTH
        right = encode(Auth(_proof(key, CLIENT_ROLE, hello_raw + welcome_raw)))
        wrong = st.builds(_mutate, st.just(right), st.lists(mutation, min_size=1, max_size=2))
        raw = data.draw(_raw_input(st.just(right) | wrong), label="auth")
        try:
            result = server.receive_auth(raw)
        except Exception as exc:  # noqa: BLE001
            _check_error(exc, raw)
            assert server.result is None
            with pytest.raises(LocalProtocolError):  # no READY, no mac_s, after a refused AUTH
                server.ready()
            continue
        # READY only ever follows the right proof for this very transcript
        event("listener accepted an AUTH")
        assert raw == right
        assert server.ready() == encode(Ready(_proof(key, SERVER_ROLE, hello_raw + welcome_raw + raw)))
        assert result.token == server.token and result is server.result
        if key is not None:
            h = decode(hello_raw)
            c2s, s2c = path_keys(key, h.nonce, SERVER_NONCE, hello_raw + welcome_raw + raw)
            assert result.keys == (s2c, c2s)
        else:
            assert result.keys is None
        break


def _welcome_input(client: ClientHandshake):
    token = client.token if client.kind == HelloKind.JOIN else ISSUED_TOKEN
    plausible = st.builds(lambda wc, addrs: Welcome(token, SERVER_NONCE, *wc, addrs), st.sampled_from(GOOD_PARAMS),
                          st.lists(addresses, max_size=3).map(tuple))
    anything = st.builds(lambda tok, nonce, wc, addrs: Welcome(tok, nonce, *wc, addrs), st.just(token) | b16,
                         st.just(SERVER_NONCE) | b16, params, st.lists(addresses, max_size=MAX_ADDRS).map(tuple))
    return (plausible | anything).map(encode)


@FUZZ
@given(st.sampled_from([None, KEY]), st.sampled_from(HelloKind), st.sampled_from([0, 5, 63]), st.data())
def test_client_handshake_any_frame_sequence(key: bytes | None, kind: HelloKind, path_id: int, data) -> None:
    client = _client(key, kind, path_id)
    hello_raw = client.hello()
    hello = decode(hello_raw)
    assert isinstance(hello, Hello) and hello.keyed == (key is not None)
    welcome_raw = auth_raw = b""
    for _ in range(data.draw(st.integers(1, 6), label="frames")):
        if client.expect == DIALLER_WELCOME:
            raw = data.draw(_raw_input(_welcome_input(client)), label="welcome")
            try:
                auth_raw = client.receive_welcome(raw)
            except Exception as exc:  # noqa: BLE001
                _check_error(exc, raw)
                assert client.expect == DIALLER_WELCOME  # nothing went out
                continue
            # the client answers only a WELCOME it can work with, and its proof is over the bytes it got
            event("dialler accepted a WELCOME")
            welcome = decode(raw)
            assert isinstance(welcome, Welcome)
            check_params(welcome.window, welcome.max_chunk, "fuzz")
            if kind == HelloKind.JOIN:
                assert welcome.token == KNOWN_TOKEN
            welcome_raw = raw
            assert auth_raw == encode(Auth(_proof(key, CLIENT_ROLE, hello_raw + welcome_raw)))
            continue
        assert client.expect == DIALLER_READY
        right = encode(Ready(_proof(key, SERVER_ROLE, hello_raw + welcome_raw + auth_raw)))
        wrong = st.builds(_mutate, st.just(right), st.lists(mutation, min_size=1, max_size=2))
        raw = data.draw(_raw_input(st.just(right) | wrong), label="ready")
        try:
            result = client.receive_ready(raw)
        except Exception as exc:  # noqa: BLE001
            _check_error(exc, raw)
            assert client.result is None
            continue
        assert raw == right, "finished without the listener's proof"
        event("dialler accepted a READY")
        welcome = decode(welcome_raw)
        assert result is client.result and result.token == welcome.token
        assert (result.peer_window, result.peer_max_chunk, result.peer_addresses) == (
            welcome.window, welcome.max_chunk, welcome.addresses)
        if key is not None:
            assert result.keys == path_keys(key, CLIENT_NONCE, welcome.nonce, hello_raw + welcome_raw + auth_raw)
        break


@FUZZ_SMALL
@given(st.sampled_from([None, KEY]), st.booleans(), garbage)
def test_byte_stream_into_server_handshake(key: bytes | None, after_hello: bool, blob: bytes) -> None:
    """The runtime's pipeline: bytes -> header checked against `expect` -> exactly one frame -> ServerHandshake,
    fresh or after a valid HELLO. Random bytes never complete a keyed handshake."""
    server, _ = _server(key)
    if after_hello:
        hello = Hello(HelloKind.NEW, 1, bytes(16), CLIENT_NONCE, 1 << 20, 65536, keyed=key is not None,
                      encrypt=key is not None)
        server.receive_hello(encode(hello))
        server.welcome()
    def step(expect: Expect, raw: memoryview) -> bool:
        if expect == LISTENER_HELLO:
            server.receive_hello(raw)
            server.welcome()
            return False
        server.receive_auth(raw)
        server.ready()
        assert key is None, "random bytes carried the right MAC"
        return True

    _drive(blob, lambda: server.expect, step)


def _drive(blob: bytes, expect: Callable[[], Expect], step: Callable[[Expect, memoryview], bool]) -> None:
    """Feed blob's frames to a handshake one at a time, each read with the phase's `expect` as the runtime reads
    them, until `step` says it is done or the first refusal (the runtime then closes the connection)."""
    pos = 0
    while True:
        phase = expect()
        try:
            raw, pos = _next_frame(blob, pos, phase)
        except ProtocolError as exc:
            assert isinstance(exc, RemoteProtocolError)
            return
        if raw is None:
            return
        try:
            if step(phase, raw):
                return
        except Exception as exc:  # noqa: BLE001
            _check_error(exc, raw)
            return


@FUZZ_SMALL
@given(st.sampled_from([None, KEY]), st.sampled_from(HelloKind), garbage)
def test_byte_stream_into_client_handshake(key: bytes | None, kind: HelloKind, blob: bytes) -> None:
    client = _client(key, kind, 3)
    client.hello()

    def step(expect: Expect, raw: memoryview) -> bool:
        if expect == DIALLER_WELCOME:
            client.receive_welcome(raw)
            return False
        client.receive_ready(raw)
        assert key is None, "random bytes carried the right MAC"
        return True

    _drive(blob, lambda: client.expect, step)


def _genuine(kind: HelloKind = HelloKind.JOIN, path_id: int = 7) -> tuple[bytes, bytes, bytes, bytes]:
    """A keyed handshake's four frames; the nonces are fixed, so fresh objects reproduce them exactly."""
    client, (server, _) = _client(KEY, kind, path_id), _server(KEY)
    hello = client.hello()
    server.receive_hello(hello)
    welcome = server.welcome()
    auth = client.receive_welcome(welcome)
    server.receive_auth(auth)
    ready = server.ready()
    client.receive_ready(ready)
    return hello, welcome, auth, ready


GENUINE = _genuine()


@FUZZ_SMALL
@given(st.sampled_from(["hello", "welcome", "auth", "ready"]), st.lists(mutation, min_size=1, max_size=3))
def test_mutated_handshake_frames_never_authenticate(which: str, ops) -> None:
    """Mutate one genuine keyed handshake frame in flight: every byte is covered, so the handshake never
    completes on the side that checks it."""
    hello, welcome, auth, ready = GENUINE
    frames = {"hello": hello, "welcome": welcome, "auth": auth, "ready": ready}
    bad = _mutate(frames[which], ops)
    if bad == frames[which]:
        return
    client, (server, _) = _client(KEY, HelloKind.JOIN, 7), _server(KEY)
    client.hello()
    try:
        if which == "hello":  # the listener answers a HELLO it cannot check yet; the AUTH then fails
            server.receive_hello(bad)
            auth_for_it = client.receive_welcome(server.welcome())
            server.receive_auth(auth_for_it)
        elif which == "welcome":  # the dialler answers; the listener, which sent the genuine WELCOME, refuses
            server.receive_hello(hello)
            server.welcome()
            server.receive_auth(client.receive_welcome(bad))
        elif which == "auth":
            server.receive_hello(hello)
            server.welcome()
            server.receive_auth(bad)
        else:
            client.receive_welcome(welcome)
            client.receive_ready(bad)
    except Exception as exc:  # noqa: BLE001
        _check_error(exc, bad)
        assert server.result is None if which != "ready" else client.result is None
        return
    raise AssertionError(f"a mutated {which} completed the handshake: {bad.hex()}")


# -- atheris (coverage-guided, libFuzzer) --------------------------------------------------------------------------

HARNESS = REPO / "tests" / "fuzz" / "fuzz_frames.py"


def _atheris(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        corpus.mkdir()
        for i, frame in enumerate(CORPUS):
            (corpus / f"frame{i}").write_bytes(bytes([i % 4]) + encode(frame))
    return subprocess.run([sys.executable, str(HARNESS), f"-artifact_prefix={tmp_path}/", *args, str(corpus)],
                          check=False, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)})


def _need_atheris() -> None:
    # atheris ships wheels for Linux x86_64 only (pyproject's [test] extra says so with a marker)
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install -e '.[test]' on Linux x86_64)")


def test_atheris_finds_no_crash(tmp_path: Path) -> None:
    _need_atheris()
    proc = _atheris(tmp_path, f"-max_total_time={8 * SCALE}", "-rss_limit_mb=1024", "-timeout=5",
                    timeout=60 + 10 * SCALE)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Uncaught Python exception" not in log and not list(tmp_path.glob("crash-*")), log[-4000:]
    done = [line for line in log.splitlines() if line.startswith("Done ")]
    assert done, log[-2000:]
    assert int(done[-1].split()[1]) >= 1000, done[-1]  # it really ran (a few thousand inputs per second)


def test_atheris_harness_reports_a_crash(tmp_path: Path) -> None:
    """The harness is not blind: with its self-test hook an ABORT frame raises, and atheris must say so."""
    _need_atheris()
    proc = _atheris(tmp_path, "-runs=5000", env={"SCTPBOND_FUZZ_SELFTEST": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-2000:]
    assert "Uncaught Python exception" in log and "self-test" in log, log[-2000:]

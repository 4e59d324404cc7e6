#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of what a stranger reaches before authentication.

    python tests/fuzz/fuzz_frames.py -max_total_time=60 [CORPUS_DIR]

The first input byte picks the target (bits 0-1) and whether a key is set (bit 2); the rest is the byte stream:

    0  decode(bytes)                       1  FrameReader, fed in several chunkings and by want()
    2  bytes -> ServerHandshake            3  bytes -> ClientHandshake

The handshake targets read the stream as the transports do: an 8-byte header checked against the handshake's
`expect` set, then exactly that frame, handed as raw bytes to receive_hello / receive_auth (listener) or
receive_welcome / receive_ready (dialler).
A target may return anything or raise a ProtocolError (SessionAborted only for a peer's ABORT frame); any other
exception, a reader holding more than its caps, two chunkings disagreeing, or a keyed handshake completing on
random bytes is a crash that atheris reports (and saves as crash-<hash> under -artifact_prefix).
tests/unit/test_fuzz.py runs this for a few seconds.
SCTPBOND_FUZZ_SELFTEST=1 makes every decoded ABORT frame "crash", to prove the harness reports crashes.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from sctpbond.errors import LocalProtocolError, ProtocolError, SessionAborted
    from sctpbond.proto.frames import (
        BODY_LIMITS,
        DIALLER_WELCOME,
        HEADER_SIZE,
        LISTENER_HELLO,
        MAX_FRAME,
        Abort,
        AbortCode,
        FrameReader,
        FrameType,
        HelloKind,
        decode,
        encode,
        parse_header,
    )
    from sctpbond.proto.handshake import ClientHandshake, ServerHandshake

KEY = b"atheris fuzzing key"  # at least 16 bytes, as the runtime requires
TOKEN = bytes(range(16))
SELFTEST = os.environ.get("SCTPBOND_FUZZ_SELFTEST") == "1"
CHUNKINGS = (1, 7, 64, 4096)


def _selftest(frames) -> None:
    if SELFTEST and any(isinstance(f, Abort) for f in frames):
        raise RuntimeError("self-test: the harness saw an ABORT frame")


def _bounds(reader: FrameReader) -> None:
    held = len(reader._buf)
    if reader._kind is None:
        limit = HEADER_SIZE
    else:
        lo, hi = BODY_LIMITS[reader._kind]
        if not lo <= reader._length <= hi:
            raise AssertionError(f"reader remembered an unchecked length {reader._length}")
        limit = HEADER_SIZE + reader._length
    if held > limit or held > MAX_FRAME or not 0 <= reader.want() <= MAX_FRAME:
        raise AssertionError(f"reader holds {held} bytes (limit {limit}), want() = {reader.want()}")


def _read(data: bytes, step: int) -> tuple[list[bytes], str | None]:
    reader, frames = FrameReader(), []
    for i in range(0, len(data), step):
        try:
            frames += reader.feed(data[i : i + step])
        except ProtocolError as exc:
            _bounds(reader)
            return [encode(f) for f in frames], type(exc).__name__
        _bounds(reader)
    return [encode(f) for f in frames], None


def _handshake_frames(data: bytes, expect):
    """Raw frames as a transport reads them before READY: each header checked against `expect()` (the phase
    may change after each frame), then exactly the body it announced. Stops at the end or at a refused header."""
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        phase = expect()
        try:
            kind, length = parse_header(data[pos : pos + HEADER_SIZE], phase)
        except ProtocolError:
            return
        if kind not in phase or HEADER_SIZE + length > HEADER_SIZE + BODY_LIMITS[FrameType.WELCOME][1]:
            raise AssertionError(f"{kind.name} frame of {length} bytes let through before READY")
        raw = data[pos : pos + HEADER_SIZE + length]
        if len(raw) < HEADER_SIZE + length:
            return
        pos += len(raw)
        if kind == FrameType.ABORT:
            _selftest([decode(raw)])
        yield raw


def _peer_error(exc: Exception, raw: bytes) -> None:
    from_peer = isinstance(exc, SessionAborted | ProtocolError) and exc.from_peer
    if from_peer and raw[:1] != bytes([FrameType.ABORT]):
        raise AssertionError("a peer's ABORT without an ABORT frame") from exc
    if not from_peer and (not isinstance(exc, ProtocolError) or isinstance(exc, LocalProtocolError)):
        raise exc
    if not str(exc).isprintable():  # it becomes one log or error line
        raise AssertionError(f"unprintable error message {str(exc)!r}") from exc
    if not from_peer:
        AbortCode(exc.abort_code)  # a valid code to tell the peer
        if not exc.peer_reason.isprintable():
            raise AssertionError(f"unprintable reason for the peer {exc.peer_reason!r}") from exc


def target_decode(data: bytes) -> None:
    try:
        frame = decode(data)
    except ProtocolError:
        return
    _selftest([frame])
    again = decode(encode(frame))
    if isinstance(frame, Abort):  # its reason may be re-truncated after U+FFFD replaced invalid UTF-8
        if again.code != frame.code or not frame.reason.isprintable():
            raise AssertionError(f"{frame!r}: unprintable reason or code lost")
    elif again != frame:
        raise AssertionError(f"{frame!r} does not survive a round trip")


def target_reader(data: bytes) -> None:
    results = {step: _read(data, step) for step in CHUNKINGS}
    ref_frames, ref_error = results[1]
    for step, (frames, error) in results.items():
        if error != ref_error or frames != ref_frames[: len(frames)] or (error is None and frames != ref_frames):
            raise AssertionError(f"chunking {step} disagrees with byte-at-a-time reading")
    reader, pos = FrameReader(), 0
    while pos < len(data):
        n = reader.want()
        try:
            reader.feed(data[pos : pos + n])
        except ProtocolError:
            break
        _bounds(reader)
        pos += n
    _selftest([decode(f) for f in ref_frames])


def target_server(data: bytes, key: bytes | None) -> None:
    hs = ServerHandshake(key=key, nonce=b"\x01" * 16, window=1 << 20, max_chunk=65536,
                         new_token=lambda: b"\x02" * 16, knows=lambda t: t == TOKEN)
    for raw in _handshake_frames(data, lambda: hs.expect):
        try:
            if hs.expect == LISTENER_HELLO:
                hs.receive_hello(raw)
                hs.welcome()
            else:
                hs.receive_auth(raw)
                hs.ready()
        except Exception as exc:
            _peer_error(exc, raw)
            return  # the runtime closes the connection after the ABORT
    if key is not None and hs.result is not None:
        raise AssertionError("a keyed listener accepted an AUTH nobody with the key made")


def target_client(data: bytes, key: bytes | None) -> None:
    kind = HelloKind.JOIN if data[:1] and data[0] & 1 else HelloKind.NEW
    hs = ClientHandshake(key=key, kind=kind, token=TOKEN if kind == HelloKind.JOIN else bytes(16), path_id=3,
                         nonce=b"\x03" * 16, window=1 << 20, max_chunk=65536)
    hs.hello()
    for raw in _handshake_frames(data, lambda: hs.expect):
        try:
            if hs.expect == DIALLER_WELCOME:
                hs.receive_welcome(raw)
            else:
                hs.receive_ready(raw)
        except Exception as exc:
            _peer_error(exc, raw)
            return
    if key is not None and hs.result is not None:
        raise AssertionError("a keyed client finished a handshake nobody with the key answered")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    key = KEY if mode & 4 else None
    match mode & 3:
        case 0:
            target_decode(rest)
        case 1:
            target_reader(rest)
        case 2:
            target_server(rest, key)
        case 3:
            target_client(rest, key)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

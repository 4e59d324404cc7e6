#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of what a stranger reaches before authentication.

    python tests/fuzz/fuzz_frames.py -max_total_time=60 [CORPUS_DIR]

The first input byte picks the target (bits 0-1) and whether a key is set (bit 2); the rest is the byte stream:

    0  decode(bytes)                       1  FrameReader, fed in several chunkings and by want()
    2  bytes -> FrameReader -> ServerHandshake                3  bytes -> FrameReader -> ClientHandshake

A target may return anything or raise a ProtocolError (SessionAborted only for a peer's ABORT frame); any other
exception, a reader holding more than its caps, or two chunkings disagreeing is a crash that atheris reports
(and saves as crash-<hash> under -artifact_prefix). tests/unit/test_fuzz.py runs this for a few seconds.
SCTPBOND_FUZZ_SELFTEST=1 makes every decoded ABORT frame "crash", to prove the harness reports crashes.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from sctpbond.errors import ProtocolError, SessionAborted
    from sctpbond.proto.frames import (
        BODY_LIMITS,
        HEADER_SIZE,
        MAX_FRAME,
        Abort,
        FrameReader,
        HelloKind,
        decode,
        encode,
    )
    from sctpbond.proto.handshake import ClientHandshake, ServerHandshake

KEY = b"atheris fuzzing key"
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


def _frames(data: bytes):
    reader, out = FrameReader(), []
    try:
        for i in range(0, len(data), 64):
            out += reader.feed(data[i : i + 64])
            _bounds(reader)
    except ProtocolError:
        pass
    _selftest(out)
    return out


def _peer_error(exc: Exception, frame) -> None:
    if not isinstance(exc, ProtocolError) and not (isinstance(exc, SessionAborted) and isinstance(frame, Abort)):
        raise exc
    if not str(exc).isprintable():  # it becomes one log or error line
        raise AssertionError(f"unprintable error message {str(exc)!r}") from exc


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
    for frame in _frames(data):
        try:
            hs.receive(frame)
        except Exception as exc:
            _peer_error(exc, frame)
            if not isinstance(frame, Abort) and not isinstance(hs.reply, Abort):
                raise AssertionError("a refused handshake has no ABORT to send") from exc  # noqa: TRY004


def target_client(data: bytes, key: bytes | None) -> None:
    kind = HelloKind.JOIN if data[:1] and data[0] & 1 else HelloKind.NEW
    hs = ClientHandshake(key=key, kind=kind, token=TOKEN if kind == HelloKind.JOIN else bytes(16), path_id=3,
                         nonce=b"\x03" * 16, window=1 << 20, max_chunk=65536)
    hs.start()
    for frame in _frames(data):
        try:
            hs.receive(frame)
        except Exception as exc:  # noqa: BLE001
            _peer_error(exc, frame)
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

"""Fuzzing the network read path itself: bytes go through a real loopback TCP socket into a running `Server`
(its accept loop, handshake threads, the transport's header-first reads, the sealing layer and the session's
receiver thread), not only into the decoder.

Contract (docs/security.md): whatever a peer sends, before or after authentication, no exception escapes any
thread (threading.excepthook would catch it), the listener keeps running, every handshake slot is given back,
no session slot is held by a peer that never authenticated, and a real client is served afterwards.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sctpbond.proto.frames import HEADER, FrameType, HelloKind, encode
from sctpbond.proto.handshake import ClientHandshake
from sctpbond.runtime.endpoints import Endpoint
from sctpbond.runtime.options import Options
from sctpbond.runtime.server import Server
from sctpbond.transport.tcp import TcpListener, connect

SCALE = max(1, int(os.environ.get("SCTPBOND_FUZZ_SCALE", "1")))
FUZZ = settings(max_examples=60 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KEY = b"fuzzing the read path, 32 bytes!"
MiB = 1 << 20


class NullEndpoint(Endpoint):
    """Each session's stream goes nowhere and sends nothing."""

    def __init__(self) -> None:
        self.source_fd = None
        self.sink_fd = None


class Running:
    """A keep-open Server on 127.0.0.1 (keyless or keyed) and everything its threads raised."""

    def __init__(self, key: bytes | None) -> None:
        self.errors: list[BaseException] = []
        self._old_hook = threading.excepthook
        threading.excepthook = lambda args: self.errors.append(args.exc_value)  # type: ignore[assignment]
        self.listener = TcpListener(["127.0.0.1"], 0)
        self.port = self.listener.addresses()[0][1]
        opts = Options(key=key, handshake_timeout=2.0)
        self.server = Server([self.listener], options=opts, endpoints=lambda info: NullEndpoint(), keep_open=True,
                             max_sessions=1000)  # each example leaves a session that ends ~2 s later
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def dial(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def settle(self, timeout: float = 10.0) -> None:
        """Until every handshake slot is free again and no slot is claimed."""
        deadline = time.monotonic() + timeout
        server = self.server
        while time.monotonic() < deadline:
            with server._lock:
                if not server._pending and not server._claims:
                    return
            time.sleep(0.01)
        raise AssertionError(f"handshake slots still held: {dict(server._pending)}, claims {server._claims}")

    def close(self) -> None:
        self.server.stop()
        self.thread.join(5)
        threading.excepthook = self._old_hook


@pytest.fixture(scope="module")
def keyless() -> Iterator[Running]:
    run = Running(None)
    yield run
    run.close()


@pytest.fixture(scope="module")
def keyed() -> Iterator[Running]:
    run = Running(KEY)
    yield run
    run.close()


def send_and_drain(run: Running, blob: bytes) -> None:
    with run.dial() as s:
        try:
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            while s.recv(65536):
                pass
        except OSError:
            pass  # reset by the listener: fine


def handshake_prefix(key: bytes | None, window: int = 64 * MiB, chunk: int = 256 * 1024) -> bytes:
    return ClientHandshake(key=key, kind=HelloKind.NEW, token=bytes(16), path_id=0, nonce=secrets.token_bytes(16),
                           window=window, max_chunk=chunk, encrypt=key is not None).hello()


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


headers = st.builds(lambda t, f, r, n: HEADER.pack(t, f, r, n), st.integers(0, 255), st.integers(0, 255),
                    st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


@FUZZ
@given(st.one_of(st.binary(max_size=2048), st.tuples(headers, st.binary(max_size=256)).map(b"".join)))
def test_any_bytes_before_the_handshake(keyless, blob):
    send_and_drain(keyless, blob)
    keyless.settle()
    assert not keyless.errors, keyless.errors


@FUZZ
@given(edits, st.binary(max_size=512))
def test_mutated_hello_then_anything(keyed, changes, tail):
    send_and_drain(keyed, mutate(handshake_prefix(KEY), changes) + tail)
    keyed.settle()
    assert not keyed.errors, keyed.errors
    assert not keyed.server.sessions, "no session without a correct AUTH"


def keyless_session(run: Running) -> socket.socket:
    """A keyless session's first path, handshake done (our own dialler: this fuzzes what follows READY)."""
    channel = connect(("127.0.0.1", run.port), None, 5.0)
    hs = ClientHandshake(key=None, kind=HelloKind.NEW, token=bytes(16), path_id=0, nonce=secrets.token_bytes(16),
                         window=64 * MiB, max_chunk=256 * 1024, encrypt=False)
    channel.send((hs.hello(),))
    channel.send((hs.receive_welcome(channel.recv(hs.expect)),))
    hs.receive_ready(channel.recv(hs.expect))
    return channel.sock


session_frames = st.lists(st.one_of(
    st.builds(lambda o, p: HEADER.pack(FrameType.DATA, 0, 0, 8 + len(p)) + o.to_bytes(8, "big") + p,
              st.integers(0, 1 << 40), st.binary(min_size=1, max_size=64)),
    st.builds(lambda v: HEADER.pack(FrameType.PING, 0, 0, 8) + v.to_bytes(8, "big"), st.integers(0, 2**64 - 1)),
    st.builds(lambda t, d: HEADER.pack(FrameType.FIN, 0, 0, 24) + t.to_bytes(8, "big") + d,
              st.integers(0, 1 << 20), st.binary(min_size=16, max_size=16)),
    st.tuples(headers, st.binary(max_size=64)).map(b"".join),
    st.binary(max_size=64),
), max_size=12)


@FUZZ
@given(session_frames)
def test_anything_after_ready_ends_at_most_that_session(keyless, frames):
    sock = keyless_session(keyless)
    try:
        sock.sendall(b"".join(frames))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    finally:
        sock.close()
    assert not keyless.errors, keyless.errors


def test_the_listener_still_serves_a_real_client(keyless, keyed):
    """After all the above, each listener still completes real handshakes (the slots all came back), and no thread
    raised meanwhile (sessions fuzzed above end asynchronously, up to ~2 s after their example)."""
    time.sleep(3)
    for run, key in ((keyless, None), (keyed, KEY)):
        run.settle()
        channel = connect(("127.0.0.1", run.port), None, 5.0)
        hs = ClientHandshake(key=key, kind=HelloKind.NEW, token=bytes(16), path_id=0,
                             nonce=secrets.token_bytes(16), window=64 * MiB, max_chunk=256 * 1024,
                             encrypt=key is not None)
        channel.send((hs.hello(),))
        channel.send((hs.receive_welcome(channel.recv(hs.expect)),))
        neg = hs.receive_ready(channel.recv(hs.expect))
        assert neg.token != bytes(16)
        channel.sock.sendall(encode_abort())
        channel.close()
        assert not run.errors, run.errors


def encode_abort() -> bytes:
    from sctpbond.proto.frames import Abort, AbortCode

    return encode(Abort(AbortCode.CANCELLED, "done"))

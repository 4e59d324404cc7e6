"""The public Python API (sctpbond.connect / sctpbond.listen) in one process, over loopback TCP."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

import sctpbond
from tests.integration.harness import SCTPBOND, free_port, stop, wait_port


def serve_digest(port: int, result: dict, **settings) -> threading.Thread:
    """A listener that reads the whole stream and answers with its sha256; returns once it listens."""

    def run() -> None:
        try:
            with sctpbond.listen(port, bind=["127.0.0.1"], transport="tcp", accept_timeout=20, **settings) as s:
                digest = hashlib.sha256()
                for block in s:
                    digest.update(block)
                s.write(digest.digest())
            result["stats"] = s.stats
        except Exception as exc:  # reported to the test
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_port(port)  # a connect before the bind is refused (a loaded CI machine lost this race once)
    return t


@pytest.mark.parametrize("key", [None, "api-secret of 32 characters ..."], ids=["no-key", "encrypted"])
def test_duplex_stream_over_two_paths(key):
    port, result = free_port(), {}
    server = serve_digest(port, result, key=key)
    data = os.urandom(24 << 20)
    with sctpbond.connect(["127.0.0.1", ("127.0.0.1", port)], port=port, transport="tcp", key=key) as stream:
        for i in range(0, len(data), 1 << 20):
            stream.write(data[i:i + (1 << 20)])
        stream.close_write()
        reply = stream.read()
    server.join(30)
    assert "error" not in result, result.get("error")
    assert reply == hashlib.sha256(data).digest()
    assert stream.stats["bytes_acked"] == len(data) and stream.stats["digest_ok"] is True
    assert len(stream.stats["paths"]) == 2 and all(p["bytes_sent"] > 0 for p in stream.stats["paths"])
    assert result["stats"]["bytes_received"] == len(data)


def test_connection_refused_raises_a_sctpbond_error():
    with pytest.raises(sctpbond.SctpbondError, match="refused"):
        with sctpbond.connect(["127.0.0.1"], port=free_port(), transport="tcp") as stream:
            stream.write(b"x" * 100)


def test_wrong_key_raises_and_the_listener_keeps_waiting():
    """A wrong key raises on the client; the one-session listener refuses it and goes on to serve the real peer."""
    port, result = free_port(), {}
    right = "the right key, 16+ bytes"
    server = serve_digest(port, result, key=right)
    with pytest.raises(sctpbond.SctpbondError, match="authentication failed"):
        with sctpbond.connect(["127.0.0.1"], port=port, transport="tcp", key="a wrong key, 16+ bytes") as stream:
            stream.write(b"x" * 100)
    with sctpbond.connect(["127.0.0.1"], port=port, transport="tcp", key=right) as stream:
        stream.write(b"y" * 100)
        stream.close_write()
        reply = stream.read()
    server.join(30)
    assert "error" not in result, result.get("error")
    assert reply == hashlib.sha256(b"y" * 100).digest()


def test_short_key_is_a_usage_error():
    with pytest.raises(sctpbond.SctpbondError, match="at least 16"):
        with sctpbond.connect(["127.0.0.1"], port=free_port(), transport="tcp", key="short") as stream:
            stream.write(b"x")


def test_a_reader_waiting_for_a_peer_that_never_comes_is_released_by_accept_timeout():
    """The stream has no thread of its own: a blocked read must still end when the listener gives up."""
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(sctpbond.SctpbondError, match="no peer connected within 1 s"):
        with sctpbond.listen(port, bind=["127.0.0.1"], transport="tcp", accept_timeout=1) as stream:
            assert stream.read() == b""
    assert time.monotonic() - t0 < 10


def test_a_reader_is_released_when_the_session_fails():
    """The peer goes away mid-stream: the blocked read returns, and leaving the block raises why."""
    port, box = free_port(), {}

    def serve() -> None:
        try:
            with sctpbond.listen(port, bind=["127.0.0.1"], transport="tcp", accept_timeout=20,
                                 path_timeout=2) as s:
                box["first"] = s.read(5)
                box["rest"] = s.read()
        except sctpbond.SctpbondError as exc:
            box["error"] = exc

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    wait_port(port)
    client = subprocess.Popen([sys.executable, "-c", (
        "import sctpbond, time\n"
        f"with sctpbond.connect(['127.0.0.1'], port={port}, transport='tcp') as s:\n"
        "    s.write(b'hello'); time.sleep(60)\n")])
    try:
        deadline = time.monotonic() + 20
        while "first" not in box and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.get("first") == b"hello"
        stop(client)
        assert_released(t, box, "reader")
    finally:
        stop(client)


def test_a_blocked_writer_is_released_when_the_session_fails():
    """The listener stops reading (its output is a pipe nobody drains), so the window fills and write() blocks;
    then the listener dies: write() must raise at once rather than wait for ever."""
    port = free_port()
    listener = subprocess.Popen(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "-N"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        box: dict = {}

        def write_forever() -> None:
            try:
                with sctpbond.connect(["127.0.0.1"], port=port, transport="tcp", window=8 << 20, chunk=1 << 20,
                                      path_timeout=2) as s:
                    while True:
                        s.write(bytes(1 << 20))
            except sctpbond.SctpbondError as exc:
                box["error"] = exc

        t = threading.Thread(target=write_forever, daemon=True)
        t.start()
        time.sleep(3)  # long enough to fill the pipe, the window and the stream's queue
        assert t.is_alive(), box
        stop(listener)
        assert_released(t, box, "writer")
    finally:
        stop(listener)


def assert_released(t: threading.Thread, box: dict, who: str) -> None:
    """The API thread blocked in a read or write came back, with the session's error, once its peer died."""
    t.join(30)
    assert not t.is_alive(), f"the {who} was not released"
    assert isinstance(box.get("error"), sctpbond.SctpbondError), box

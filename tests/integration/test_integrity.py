"""Encryption, end-to-end digests, --limit-rate and the progress display, with real processes in namespaces.

Corruption is injected below the sealing with the SCTPBOND_TEST_FLIP_DATA=N hook (transport/sealed.py): one bit
of the Nth DATA frame the client puts on the wire is flipped, as a faulty link would.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import (
    PORT,
    SCTPBOND,
    assert_ok,
    free_port,
    random_file,
    sha256_file,
    stop,
    transfer,
    wait_for_text,
    wait_listening,
)

pytestmark = pytest.mark.netns
MiB = 1 << 20
FLIP = {"SCTPBOND_TEST_FLIP_DATA": "40"}  # well inside the stream: 40 chunks of 256 KiB = 10 MiB


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_bytes(os.urandom(32).hex().encode())
    path.chmod(0o600)
    return path


def is_prefix(part: Path, whole: Path) -> bool:
    """Everything written to `part` is exactly the start of `whole` (nothing corrupted was written)."""
    with open(part, "rb") as a, open(whole, "rb") as b:
        while block := a.read(1 << 20):
            if b.read(len(block)) != block:
                return False
    return True


def test_encrypted_transfer_both_ways(netns_topology, tmp_path, keyfile):
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 64 * MiB)
    down = random_file(tmp_path / "down", 32 * MiB)
    key = ["--key-file", str(keyfile)]
    res = transfer(net, tmp_path, to_listener=up, to_client=down, client_args=key, listen_args=key)
    assert_ok(res, tmp_path, up, down)
    for side in (res.client, res.listener):
        assert side.stats["digest_ok"] is True
        assert all(p["transport_info"].get("encrypted") == "aes-256-gcm" for p in side.stats["paths"])


@pytest.mark.parametrize("mode", [[], ["--no-encrypt"]], ids=["encrypted", "authenticated"])
def test_flipped_bit_on_a_keyed_path_fails_that_path_only(netns_topology, tmp_path, keyfile, mode):
    """One bit flipped on the wire in a keyed session (sealed, or in clear with --no-encrypt) is caught by the
    AEAD tag: the frame is never used, its path fails and is re-dialled like a dead one, and the transfer still
    completes byte-exact (a flipped bit on one link must not end a transfer that survives that link's loss)."""
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 64 * MiB)
    key = ["--key-file", str(keyfile), *mode]
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=key, listen_args=key, client_env=FLIP)
    assert_ok(res, tmp_path, up)
    assert "Traceback" not in res.listener.stderr + res.client.stderr
    down = [line for line in res.listener.stderr.splitlines() if "failed authentication" in line]
    assert len(down) == 1 and "down" in down[0], res.listener.stderr
    assert "re-joined" in res.client.stderr, res.client.stderr
    assert res.listener.stats["digest_ok"] is True


def test_flipped_bit_without_a_key_is_caught_by_the_digest(netns_topology, tmp_path):
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 64 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=[], client_env=FLIP)
    assert res.listener.rc == 1, res.listener.stderr
    assert "digest mismatch" in res.listener.stderr
    assert res.client.rc == 1, res.client.stderr  # the sender is never told that all went well
    assert "digest mismatch" in res.client.stderr
    assert sha256_file(tmp_path / "out_l") != sha256_file(up)


def test_no_encrypt_on_both_sides_transfers_in_clear(netns_topology, tmp_path, keyfile):
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 32 * MiB)
    args = ["--key-file", str(keyfile), "--no-encrypt"]
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=args, listen_args=args)
    assert_ok(res, tmp_path, up)
    for p in res.listener.stats["paths"]:
        assert "encrypted" not in p["transport_info"] and p["transport_info"]["authenticated"] == "aes-256-gmac"


def test_encrypting_listener_refuses_a_client_without_encryption(netns_topology, tmp_path, keyfile):
    """The refused client exits 1 saying why; the one-session listener logs it and serves the next, right, peer."""
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 1 * MiB)
    key = ["--key-file", str(keyfile)]
    addr = net.addr("b", 0)
    listener = net.popen("b", SCTPBOND + ["listen", "-t", "tcp", "-p", str(PORT), "-N", "-o", str(tmp_path / "out_l"),
                                          *key], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(net, "b", PORT)
        base = SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "-N", "-i", str(up), "--no-auto", *key]
        clear = net.run("a", base + ["--no-encrypt", addr], capture_output=True, text=True, timeout=60,
                        stdin=subprocess.DEVNULL)
        sealed = net.run("a", base + [addr], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        _, lerr = listener.communicate(timeout=30)
    finally:
        stop(listener)
    assert clear.returncode == 1 and "requires encryption" in clear.stderr, clear.stderr
    assert sealed.returncode == 0, sealed.stderr
    assert listener.returncode == 0, lerr
    assert "Traceback" not in lerr and lerr.count("rejected connection") == 1, lerr
    assert sha256_file(tmp_path / "out_l") == sha256_file(up)


def test_limit_rate_holds_within_ten_percent(netns_topology, tmp_path):
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 24 * MiB)
    res = transfer(net, tmp_path, to_listener=up, to_client=None, client_args=["--limit-rate", "40Mbit"])
    assert_ok(res, tmp_path, up)
    rate = up.stat().st_size * 8 / res.client.stats["elapsed_s"] / 1e6
    assert 36 <= rate <= 44, f"{rate:.1f} Mbit/s with --limit-rate 40Mbit"
    assert all(b > 0 for b in res.client.path_bytes("bytes_sent"))  # still striped over both paths


def test_progress_is_drawn_on_a_terminal(netns_topology, tmp_path):
    """stderr on a pseudo-terminal: progress appears by default (bytes, rate, per-path rates)."""
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 48 * MiB)
    out = tmp_path / "out_l"
    listener = net.popen("b", SCTPBOND + ["listen", "-p", str(PORT), "-N", "-o", str(out)],
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    master, slave = pty.openpty()
    client = None
    try:
        wait_listening(net, "b", PORT)
        client = net.popen("a", SCTPBOND + ["connect", "-p", str(PORT), "-i", str(up), "-o", "/dev/null",
                                            net.addr("b", 0), net.addr("b", 1)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                           env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    block = os.read(master, 65536)
                except OSError:  # EIO: the client closed the terminal
                    break
                if not block:
                    break
                seen += block
            elif client.poll() is not None:
                break
        assert client.wait(30) == 0
        assert listener.wait(30) == 0, listener.stderr.read()
    finally:
        stop(client, listener)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode("utf-8", "replace"))
    assert "sent" in text and "MiB" in text and "/s" in text, text[-2000:]
    assert re.search(r"p0 \d+ · p1 \d+ Mbit/s", text), text[-2000:]
    assert "48.0/48.0 MiB" in text, text[-2000:]  # the size of the input file is known: a total and an ETA
    assert sha256_file(out) == sha256_file(up)


@pytest.mark.parametrize(("args", "notice"), [(["-b", "0.0.0.0"], True), (["-b", "127.0.0.1"], False),
                                              (["-b", "0.0.0.0", "--key-file", "KEY"], False)],
                         ids=["wildcard-no-key", "loopback", "keyed"])
def test_listener_without_a_key_on_a_reachable_address_says_so(tmp_path, keyfile, args, notice):
    args = [str(keyfile) if a == "KEY" else a for a in args]
    log = tmp_path / "listen.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(SCTPBOND + ["listen", "-v", "-t", "tcp", "-p", str(free_port()), "-N",
                                            "-o", "/dev/null", *args], stdin=subprocess.DEVNULL, stderr=f)
    try:  # "listening on port" is its last start-up line, so the notice (if any) is written by then
        err = wait_for_text(log, lambda text: "listening on port" in text, timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "listening on port" in err, err
    assert ("notice: no key" in err) == notice, err
    assert "Traceback" not in err

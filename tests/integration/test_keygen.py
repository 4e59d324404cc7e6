"""`sctpbond keygen FILE`: a key --key-file accepts, readable by its owner only, never overwriting one."""

from __future__ import annotations

import base64
import os
import stat
import subprocess

from .harness import SCTPBOND, free_port, random_file, sha256_file, stop, wait_port


def keygen(path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(SCTPBOND + ["keygen", str(path)], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, **kw)


def test_keygen_writes_32_random_bytes_with_mode_600_whatever_the_umask(tmp_path):
    old = os.umask(0)  # the most permissive umask: the file must still be 600
    try:
        res = keygen(tmp_path / "k")
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stderr
    mode = stat.S_IMODE((tmp_path / "k").stat().st_mode)
    assert mode == 0o600, oct(mode)
    text = (tmp_path / "k").read_bytes()
    assert text.endswith(b"\n") and len(base64.b64decode(text.strip(), validate=True)) == 32
    other = tmp_path / "k2"
    assert keygen(other).returncode == 0 and other.read_bytes() != text  # fresh randomness each time


def test_keygen_never_overwrites(tmp_path):
    key = tmp_path / "k"
    assert keygen(key).returncode == 0
    before = key.read_bytes()
    res = keygen(key)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sctpbond: error: ") and "exists" in lines[0], res.stderr
    assert key.read_bytes() == before


def test_a_generated_key_serves_a_keyed_transfer(tmp_path):
    key = tmp_path / "k"
    assert keygen(key).returncode == 0
    port = free_port()
    data = random_file(tmp_path / "data", 2 << 20)
    env = {k: v for k, v in os.environ.items() if k != "SCTPBOND_KEY"}
    lst = subprocess.Popen(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "-N", "-o",
                                       str(tmp_path / "out"), "--key-file", str(key)],
                           stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_port(port)
        client = subprocess.run(SCTPBOND + ["connect", "-t", "tcp", "-p", str(port), "-i", str(data), "--key-file",
                                            str(key), "127.0.0.1", "-o", "/dev/null"],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
        _, lerr = lst.communicate(timeout=30)
    finally:
        stop(lst)
    assert client.returncode == 0, client.stderr
    assert lst.returncode == 0, lerr
    assert sha256_file(tmp_path / "out") == sha256_file(data)

"""Bad input gets one clear line on stderr and a non-zero exit code, never a traceback or silent data loss."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from sctpbond.transport import sctp_support

from .harness import SCTPBOND, free_port, random_file, sha256_file, wait_for_bytes, wait_port, write_key


def run(args, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(SCTPBOND + args, capture_output=True, text=True, timeout=timeout,
                          stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("sctpbond: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[-1], proc.stderr



@pytest.mark.parametrize("args, needle", [
    (["connect", "--path", "nonsense", "-N"], "--path"),
    (["connect", "-N"], "no path"),
    (["connect", "127.0.0.1:99999", "-N"], "bad port"),
    (["connect", "--chunk", "12", "127.0.0.1", "-N"], "--chunk"),
    (["connect", "--window", "lots", "127.0.0.1", "-N"], "--window"),
    (["listen", "--key-file", "/nonexistent/key", "-N"], "key file"),
])
def test_bad_usage_exits_2(args, needle):
    proc = run(args)
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc, needle)


def test_sctp_requested_without_kernel_support_exits_2():
    if sctp_support()[0]:
        pytest.skip("this kernel has SCTP; the VM suite covers --transport sctp")
    proc = run(["listen", "-t", "sctp", "-p", str(free_port()), "-N"])
    assert proc.returncode == 2
    one_line_error(proc, "SCTP", "modprobe sctp")


def test_auto_transport_says_it_falls_back_to_tcp(tmp_path):
    if sctp_support()[0]:
        pytest.skip("this kernel has SCTP")
    port = free_port()
    proc = run(["connect", "-p", str(port), "127.0.0.1", "-N"])
    assert proc.returncode == 1
    assert "using TCP" in proc.stderr
    one_line_error(proc, "refused")


def test_connection_refused_exits_1():
    proc = run(["connect", "-t", "tcp", "-p", str(free_port()), "127.0.0.1", "127.0.0.2", "-N"])
    assert proc.returncode == 1
    one_line_error(proc, "refused")


@pytest.mark.netns
def test_unreachable_address_exits_1(netns_topology):
    net = netns_topology("2x200")
    # 10.99.0.1 has no route in host a: the kernel answers at once, no packet leaves.
    proc = net.run("a", SCTPBOND + ["connect", "-t", "tcp", "10.99.0.1", "-N"], capture_output=True, text=True,
                   timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    one_line_error(proc, "cannot reach 10.99.0.1")


@pytest.mark.netns
def test_silent_address_times_out_with_a_clear_error(netns_topology):
    net = netns_topology("2x200")
    net.blackhole(0, True)
    t0 = time.monotonic()
    proc = net.run("a", SCTPBOND + ["connect", "-t", "tcp", net.addr("b", 0), "-N"], capture_output=True,
                   text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    one_line_error(proc, "no answer from")
    assert time.monotonic() - t0 < 20


def test_port_in_use_exits_1():
    port = free_port()
    first = subprocess.Popen(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "-N"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_port(port)
        proc = run(["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "-N"])
        assert proc.returncode == 1
        one_line_error(proc, f"port {port} is already in use")
    finally:
        first.kill()
        first.wait()


def _listener(port: int, out, key_env: str | None, extra=()):
    env = dict(os.environ)
    env.pop("SCTPBOND_KEY", None)
    if key_env:
        env["SCTPBOND_KEY"] = key_env
    return subprocess.Popen(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "-N",
                                        "-o", str(out), *extra],
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def _client(port: int, key_file, data) -> subprocess.CompletedProcess:
    args = ["connect", "-t", "tcp", "-p", str(port), "-i", str(data), "127.0.0.1", "-o", "/dev/null"]
    if key_file:
        args += ["--key-file", str(key_file)]
    env = {k: v for k, v in os.environ.items() if k != "SCTPBOND_KEY"}
    return run(args, env=env)


def test_wrong_key_is_refused_then_right_key_transfers(tmp_path):
    """With --keep-open a wrong key is one log line and the listener goes on (as a one-session listener does:
    tests/integration/test_keep_open.py)."""
    port = free_port()
    data = random_file(tmp_path / "data", 3 << 20)
    good = write_key(tmp_path / "good.key", "correct horse battery staple")
    bad = write_key(tmp_path / "bad.key", "incorrect horse battery staple")
    lst = _listener(port, tmp_path / "out-{n}", key_env="correct horse battery staple", extra=["--keep-open"])
    try:
        wait_port(port)
        wrong = _client(port, bad, data)
        assert wrong.returncode == 1
        one_line_error(wrong, "authentication failed")
        missing = _client(port, None, data)
        assert missing.returncode == 1
        one_line_error(missing, "requires a key")
        assert lst.poll() is None, "a wrong key must not end a --keep-open listener"
        assert list(tmp_path.glob("out-*")) == [], "no file may be created for an unauthenticated peer"
        right = _client(port, good, data)
        assert right.returncode == 0, right.stderr
        assert lst.poll() is None
        lst.terminate()
        _, err = lst.communicate(timeout=30)
        assert err.count("rejected connection") == 2, err
        assert sha256_file(tmp_path / "out-1") == sha256_file(data)
    finally:
        if lst.poll() is None:
            lst.kill()
            lst.wait()


def test_key_on_client_only_is_refused(tmp_path):
    port = free_port()
    key = write_key(tmp_path / "k", "a secret of sixteen bytes or more")
    lst = _listener(port, tmp_path / "out", key_env=None)
    try:
        wait_port(port)
        proc = _client(port, key, random_file(tmp_path / "d", 1024))
        assert proc.returncode == 1
        one_line_error(proc, "no key")
    finally:
        lst.kill()
        lst.wait()


def test_garbage_and_silent_connections_do_not_break_the_listener(tmp_path):
    port = free_port()
    out = tmp_path / "out"
    lst = _listener(port, out, key_env=None)
    try:
        wait_port(port)
        with socket.create_connection(("127.0.0.1", port)) as s:  # garbage
            s.sendall(os.urandom(4096))
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as s:  # oversize length in a HELLO header
            s.sendall(bytes([1, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF]))
            time.sleep(0.2)
        silent = socket.create_connection(("127.0.0.1", port))  # stays silent during the real transfer
        data = random_file(tmp_path / "data", 8 << 20)
        proc = _client(port, None, data)
        silent.close()
        assert proc.returncode == 0, proc.stderr
        _, err = lst.communicate(timeout=30)
        assert lst.returncode == 0, err
        assert sha256_file(out) == sha256_file(data)
        assert "rejected connection" in err
    finally:
        if lst.poll() is None:
            lst.kill()
            lst.wait()


def test_peer_killed_mid_transfer_fails_the_other_side(tmp_path):
    port = free_port()
    lst = _listener(port, tmp_path / "out", key_env=None)
    try:
        wait_port(port)
        feeder = subprocess.Popen(["sh", "-c", "while :; do head -c 1048576 /dev/zero; sleep 0.05; done"],
                                  stdout=subprocess.PIPE)
        client = subprocess.Popen(SCTPBOND + ["connect", "-t", "tcp", "-p", str(port), "127.0.0.1", "127.0.0.2",
                                              "-o", "/dev/null"], stdin=feeder.stdout, stderr=subprocess.PIPE,
                                  text=True)
        feeder.stdout.close()
        wait_for_bytes(tmp_path / "out", 2 << 20, client)  # mid-stream, however slowly the processes start
        lst.kill()
        lst.wait()
        t0 = time.monotonic()
        _, err = client.communicate(timeout=30)
        feeder.kill()
        assert client.returncode == 1
        assert time.monotonic() - t0 < 10
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("sctpbond: error: "), err
    finally:
        for p in (lst,):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_doctor_reports_what_the_host_supports():
    proc = run(["doctor"])
    assert proc.returncode == 0, proc.stderr
    assert "kernel SCTP" in proc.stdout and "MPTCP" in proc.stdout and "interfaces:" in proc.stdout
    expected = "available" if sctp_support()[0] else "modprobe sctp"
    assert expected in proc.stdout.splitlines()[1], proc.stdout
    assert "127.0.0.1/8" in proc.stdout

"""`listen --keep-open`: many sessions, several at once, each isolated; one failing never disturbs another.
And the one-session default: a wrong key is refused in one line, nothing is written, and the listener keeps
waiting for its real peer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .harness import (
    PORT,
    SCTPBOND,
    free_port,
    random_file,
    sha256_file,
    stop,
    wait_for_text,
    wait_listening,
    wait_port,
    write_key,
)

pytestmark = pytest.mark.netns
MiB = 1 << 20
FAILED = re.compile(r"^sctpbond: session \d+ from \S+ failed: ", re.MULTILINE)
DONE = re.compile(r"^sctpbond: session \d+ from \S+ done: ", re.MULTILINE)


def _addrs(net) -> list[str]:
    return [net.addr("b", i) for i in range(len(net.topo.links))]



def _children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


def test_three_concurrent_sessions_one_killed_midway(netns_topology, tmp_path):
    net = netns_topology("2x200")
    lerr_path = tmp_path / "listen.err"
    listener = net.popen("b", SCTPBOND + ["listen", "-v", "-t", "tcp", "-p", str(PORT), "--keep-open", "--exec",
                                          "cat"], stdin=subprocess.DEVNULL, stderr=open(lerr_path, "w"))
    feeder = victim = None
    clients: dict[str, subprocess.Popen] = {}
    try:
        wait_listening(net, "b", PORT)
        files = {name: random_file(tmp_path / name, 64 * MiB) for name in ("A", "B")}
        for name, data in files.items():
            clients[name] = net.popen("a", SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "-i", str(data),
                                                       "-o", str(tmp_path / f"{name}.back"), *_addrs(net)],
                                      stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # the victim streams without end from a pipe, so it is surely mid-way when it is killed
        feeder = subprocess.Popen(["sh", "-c", "while :; do head -c 1048576 /dev/urandom; sleep 0.02; done"],
                                  stdout=subprocess.PIPE)
        victim = net.popen("a", SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "-o", "/dev/null",
                                            *_addrs(net)], stdin=feeder.stdout, stderr=subprocess.DEVNULL)
        feeder.stdout.close()
        wait_for_text(lerr_path, lambda t: t.count("started by") >= 3, 30)
        time.sleep(0.5)
        running = [name for name, c in clients.items() if c.poll() is None]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        feeder.kill()
        for name, client in clients.items():
            _, err = client.communicate(timeout=120)
            assert client.returncode == 0, f"{name}: {err}"
            assert sha256_file(tmp_path / f"{name}.back") == sha256_file(files[name]), name
        assert running == ["A", "B"], "the two other sessions were still transferring when the third was killed"

        text = wait_for_text(lerr_path, lambda t: FAILED.search(t), 30)
        assert len(FAILED.findall(text)) == 1, text

        # the listener goes on serving: a fourth session works
        fourth = random_file(tmp_path / "D", 8 * MiB)
        d = net.run("a", SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "-i", str(fourth), "-o",
                                     str(tmp_path / "D.back"), *_addrs(net)], capture_output=True, text=True,
                    timeout=60, stdin=subprocess.DEVNULL)
        assert d.returncode == 0, d.stderr
        assert sha256_file(tmp_path / "D.back") == sha256_file(fourth)
        text = wait_for_text(lerr_path, lambda t: len(DONE.findall(t)) >= 3, 20)
        assert len(DONE.findall(text)) == 3 and len(FAILED.findall(text)) == 1, text
        assert "rejected connection" not in text, text
        assert "Traceback" not in text, text
        assert listener.poll() is None, text
        # every session's command is gone, the killed one's included
        deadline = time.monotonic() + 10
        while _children(listener.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _children(listener.pid) == [], "a session's command outlived its session"
    finally:
        stop(victim, feeder, *clients.values(), listener)


def test_keep_open_files_per_session_and_a_wrong_key_in_between(netns_topology, tmp_path):
    """-o with {n}: one file per session; a wrong key and garbage are logged in one line each, the listener goes
    on, and no file is created for them."""
    net = netns_topology("2x200")
    key = write_key(tmp_path / "key", "the right key of this test")
    bad = write_key(tmp_path / "bad", "a wrong key for the same test")
    lerr_path = tmp_path / "listen.err"
    outdir = tmp_path / "recv"
    outdir.mkdir()
    listener = net.popen("b", SCTPBOND + ["listen", "-t", "tcp", "-p", str(PORT), "--keep-open", "--key-file",
                                          str(key), "-o", str(outdir / "session-{n}.bin")],
                         stdin=subprocess.DEVNULL, stderr=open(lerr_path, "w"))
    try:
        wait_listening(net, "b", PORT)
        first = random_file(tmp_path / "first", 16 * MiB)
        second = random_file(tmp_path / "second", 24 * MiB)

        def send(data: Path, keyfile: Path) -> subprocess.CompletedProcess:
            return net.run("a", SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "--key-file", str(keyfile),
                                            "-i", str(data), *_addrs(net)], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)

        r1 = send(first, key)
        assert r1.returncode == 0, r1.stderr
        wrong = send(second, bad)
        assert wrong.returncode == 1
        assert wrong.stderr.strip().splitlines()[-1].startswith("sctpbond: error: authentication failed"), wrong.stderr
        garbage = f"import socket, os; socket.create_connection(({_addrs(net)[0]!r}, {PORT})).sendall(os.urandom(4096))"
        net.run("a", ["python3", "-c", garbage], check=True)
        r2 = send(second, key)
        assert r2.returncode == 0, r2.stderr
        text = wait_for_text(lerr_path, lambda t: "authentication failed" in t, 10)
        assert listener.poll() is None, text
        assert text.count("rejected connection") == 2, text
        assert sorted(p.name for p in outdir.iterdir()) == ["session-1.bin", "session-2.bin"]
        assert sha256_file(outdir / "session-1.bin") == sha256_file(first)
        assert sha256_file(outdir / "session-2.bin") == sha256_file(second)
    finally:
        stop(listener)


def test_max_sessions_refuses_more_and_frees_the_slot(tmp_path):
    port, log = free_port(), tmp_path / "listen.log"
    with open(log, "w") as lerr:
        lst = subprocess.Popen(SCTPBOND + ["listen", "-v", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port),
                                           "--keep-open", "--max-sessions", "1", "--exec", "cat"],
                               stdin=subprocess.DEVNULL, stderr=lerr)
    feeder = holder = None
    try:
        wait_port(port)
        feeder = subprocess.Popen(["sh", "-c", "while :; do head -c 65536 /dev/zero; sleep 0.05; done"],
                                  stdout=subprocess.PIPE)
        holder = subprocess.Popen(SCTPBOND + ["connect", "-t", "tcp", "-p", str(port), "127.0.0.1", "-o",
                                              "/dev/null"], stdin=feeder.stdout, stderr=subprocess.PIPE)
        feeder.stdout.close()
        text = wait_for_text(log, lambda t: "session 1 started by" in t, 60)  # the slot is taken from here on
        assert "session 1 started by" in text, text
        busy = _run_client(port, b"hello")
        assert busy.returncode == 1
        assert "limit of 1 sessions" in busy.stderr.decode(), busy.stderr
        holder.kill()
        holder.wait()
        feeder.kill()
        deadline = time.monotonic() + 15  # the killed session fails once its peer is gone (about 2 s)
        while True:
            ok = _run_client(port, b"x" * 300000)
            if ok.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"x" * 300000
        assert lst.poll() is None
    finally:
        stop(holder, feeder, lst)


# -- one-session mode: a wrong key is refused, the listener keeps waiting, nothing is written -----------------------
RIGHT, WRONG = "the right key of this test", "a wrong key for the same test"


@pytest.mark.parametrize("listener_key, client_key, listener_says, client_says", [
    (RIGHT, WRONG, "presented a wrong key", "does not have the same key"),
    (RIGHT, None, "the listener requires a key", "requires a key"),
    (None, WRONG, "the listener has no key", "the listener has no key"),
])
def test_wrong_key_is_refused_and_a_one_session_listener_keeps_waiting(tmp_path, listener_key, client_key,
                                                                        listener_says, client_says):
    """A stranger's failed handshake must not end a one-shot listener (anyone who reaches the port could): one
    log line, no output file, and the real peer is served afterwards."""
    port = free_port()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "SCTPBOND_KEY"}
    lst = subprocess.Popen(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "-N", "-o",
                                       str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=dict(env, SCTPBOND_KEY=listener_key) if listener_key else env)
    try:
        wait_port(port)
        data = random_file(tmp_path / "data", 1 * MiB)

        def client(key: str | None) -> subprocess.CompletedProcess:
            args = ["connect", "-t", "tcp", "-p", str(port), "-i", str(data), "-o", str(tmp_path / "back"),
                    "127.0.0.1"]
            if key:
                args += ["--key-file", str(write_key(tmp_path / "key", key))]
            return subprocess.run(SCTPBOND + args, capture_output=True, text=True, timeout=30, env=env,
                                  stdin=subprocess.DEVNULL)

        wrong = client(client_key)
        assert not out.exists(), "the output file must not be created before a peer has authenticated"
        assert lst.poll() is None, "a failed authentication must not end a one-session listener"
        real = client(listener_key)
        lout, lerr = lst.communicate(timeout=15)
    finally:
        stop(lst)
    assert wrong.returncode == 1, wrong.stderr
    lines = wrong.stderr.strip().splitlines()
    assert "Traceback" not in wrong.stderr and lines[-1].startswith("sctpbond: error: "), wrong.stderr
    assert client_says in lines[-1], wrong.stderr
    assert real.returncode == 0, real.stderr
    assert lst.returncode == 0, lerr
    assert "Traceback" not in lerr, lerr
    refusals = [line for line in lerr.splitlines() if "rejected connection from 127.0.0.1" in line]
    assert len(refusals) == 1 and listener_says in refusals[0], lerr
    assert sha256_file(out) == sha256_file(data)
    assert lout == ""


@pytest.mark.parametrize("args, needle", [
    (["--keep-open"], "--relay"),
    (["--keep-open", "-o", "same-name.bin"], "{n}"),
    (["--keep-open", "-o", "x-{m}.bin"], "unknown field"),
    (["--relay", "127.0.0.1:22", "--exec", "cat"], "exclude each other"),
    (["--relay", "127.0.0.1"], "HOST:PORT"),
    (["--relay", "127.0.0.1:22", "-o", "file"], "-o does not apply"),
    (["--max-sessions", "4", "-o", "file"], "only with --keep-open"),
])
def test_listen_usage_errors_exit_2(tmp_path, args, needle):
    proc = subprocess.run(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(free_port()), *args],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sctpbond: error: ") and needle in last, proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- helpers ------------------------------------------------------------------------------------------------------

def _run_client(port: int, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(SCTPBOND + ["connect", "-t", "tcp", "-p", str(port), "127.0.0.1"], input=data,
                          capture_output=True, timeout=30)

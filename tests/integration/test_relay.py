"""`listen --relay HOST:PORT` and `--exec CMD`: each session is forwarded to a TCP service or a command, and
`connect` works as an ssh ProxyCommand. Real services run inside the listener's namespace; every transfer checks
sha256 in both directions and both exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import PORT, SCTPBOND, free_port, random_file, sha256_file, stop, wait_for_text, wait_listening, wait_port

pytestmark = pytest.mark.netns
MiB = 1 << 20

# A TCP service for the relay: sends SEND while it stores what it receives in RECV (full duplex), passes the
# half-close on (shutdown(SHUT_WR) after its last byte) and exits 0 only once it has read EOF from its peer.
DUPLEX_SERVICE = r"""
import socket, sys, threading
port, send_path, recv_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
srv = socket.create_server(("127.0.0.1", port))
print("ready", flush=True)
conn, _ = srv.accept()
def send():
    with open(send_path, "rb") as f:
        while block := f.read(1 << 16):
            conn.sendall(block)
    conn.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
with open(recv_path, "wb") as out:
    while block := conn.recv(1 << 16):
        out.write(block)
t.join()
conn.close()
"""


def _service(net, tmp: Path, port: int, send: Path, recv: Path) -> subprocess.Popen:
    script = tmp / "service.py"
    script.write_text(DUPLEX_SERVICE)
    proc = net.popen("b", [sys.executable, str(script), str(port), str(send), str(recv)], stdout=subprocess.PIPE,
                     text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _addrs(net) -> list[str]:
    return [net.addr("b", i) for i in range(len(net.topo.links))]


def test_relay_round_trip_through_a_tcp_service(netns_topology, tmp_path):
    """One-session listener relaying to a duplex TCP service: 48 MiB up, 32 MiB down at the same time."""
    net = netns_topology("2x200")
    up = random_file(tmp_path / "up", 48 * MiB)
    down = random_file(tmp_path / "down", 32 * MiB)
    got_up, got_down = tmp_path / "service_received", tmp_path / "client_received"
    service = _service(net, tmp_path, 9000, down, got_up)
    listener = net.popen("b", SCTPBOND + ["listen", "-t", "tcp", "-p", str(PORT), "--relay", "127.0.0.1:9000",
                                          "--stats-json", str(tmp_path / "l.json")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(net, "b", PORT)
        client = net.run("a", SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "-i", str(up), "-o", str(got_down),
                                          *_addrs(net)], capture_output=True, text=True, timeout=120)
        lout, lerr = listener.communicate(timeout=30)
        assert service.wait(timeout=30) == 0, "the service must see EOF after the whole stream"
    finally:
        stop(listener, service)
    assert client.returncode == 0, client.stderr
    assert listener.returncode == 0, lerr
    assert lout == "", "with --relay nothing goes to the listener's stdout"
    assert sha256_file(got_up) == sha256_file(up)
    assert sha256_file(got_down) == sha256_file(down)


def test_relay_target_down_is_a_clear_error_on_both_sides(tmp_path):
    """No service behind --relay: the client is refused with the reason, the one-session listener exits 1."""
    port, dead = free_port(), free_port()
    listener = subprocess.Popen(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "--relay",
                                            f"127.0.0.1:{dead}"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    try:
        wait_port(port)
        client = subprocess.run(SCTPBOND + ["connect", "-t", "tcp", "-p", str(port), "127.0.0.1"],
                                input=b"hello", capture_output=True, timeout=30)
        _, lerr = listener.communicate(timeout=30)
    finally:
        stop(listener)
    cerr = client.stderr.decode()
    assert client.returncode == 1, cerr
    assert cerr.strip().splitlines()[-1].startswith("sctpbond: error: "), cerr
    assert f"cannot reach relay target 127.0.0.1:{dead}" in cerr, cerr
    assert listener.returncode == 1, lerr
    assert f"cannot reach relay target 127.0.0.1:{dead}" in lerr.strip().splitlines()[-1], lerr
    assert "Traceback" not in cerr + lerr


def test_exec_cat_round_trip(netns_topology, tmp_path):
    """--exec 'cat': the stream goes through a command and comes back byte-exact; the command's EOF ends it."""
    net = netns_topology("2x200")
    data = random_file(tmp_path / "data", 48 * MiB)
    back = tmp_path / "back"
    listener = net.popen("b", SCTPBOND + ["listen", "-t", "tcp", "-p", str(PORT), "--exec", "cat"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(net, "b", PORT)
        t0 = time.monotonic()
        client = net.run("a", SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "-i", str(data), "-o", str(back),
                                          "--stats-json", str(tmp_path / "c.json"), *_addrs(net)],
                         capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - t0
        lout, lerr = listener.communicate(timeout=30)
    finally:
        stop(listener)
    assert client.returncode == 0, client.stderr
    assert listener.returncode == 0, lerr
    assert lout == ""
    assert sha256_file(back) == sha256_file(data)
    assert elapsed < 60


def test_exec_nonzero_exit_status_is_logged(tmp_path):
    port = free_port()
    listener = subprocess.Popen(SCTPBOND + ["listen", "-t", "tcp", "-b", "127.0.0.1", "-p", str(port), "--exec",
                                            "cat; exit 3"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    try:
        wait_port(port)
        client = subprocess.run(SCTPBOND + ["connect", "-t", "tcp", "-p", str(port), "127.0.0.1"],
                                input=b"x" * 100000, capture_output=True, timeout=30)
        _, lerr = listener.communicate(timeout=30)
    finally:
        stop(listener)
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"x" * 100000
    assert "session 1: command exited with status 3" in lerr, lerr
    assert "Traceback" not in lerr


# -- a real sshd behind --relay, a real ssh with `sctpbond connect` as ProxyCommand ---------------------------------
SSH_PORT = 2222


def _sshd(net, tmp: Path) -> tuple[subprocess.Popen, list[str]]:
    """sshd -D in host b on 127.0.0.1:2222 with throw-away keys; returns it and the ssh options to reach it."""
    sshd, ssh = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("ssh")
    if not os.path.exists(sshd) or ssh is None:
        pytest.skip("needs openssh-server and openssh-client (scripts/setup.sh installs them)")
    for name in ("hostkey", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "id.pub").read_text())
    (tmp / "known_hosts").write_text("sctpbond-test " + (tmp / "hostkey.pub").read_text())
    (tmp / "sshd_config").write_text(f"""\
Port {SSH_PORT}
ListenAddress 127.0.0.1
HostKey {tmp}/hostkey
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PidFile none
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    proc = net.popen("b", [sshd, "-D", "-e", "-f", str(tmp / "sshd_config")], stdin=subprocess.DEVNULL,
                     stderr=open(tmp / "sshd.log", "w"))
    wait_listening(net, "b", SSH_PORT)
    proxy = " ".join(SCTPBOND + ["connect", "-q", "-t", "tcp", "-p", str(PORT), *_addrs(net)])
    opts = ["-F", "/dev/null", "-i", str(tmp / "id"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "HostKeyAlias=sctpbond-test", "-o", f"UserKnownHostsFile={tmp}/known_hosts",
            "-o", "StrictHostKeyChecking=yes", "-o", f"ProxyCommand={proxy}", "-o", "LogLevel=ERROR"]
    return proc, [ssh, *opts, "root@sctpbond-test"]


def test_ssh_proxycommand_through_a_keep_open_relay_to_sshd(netns_topology, tmp_path):
    net = netns_topology("2x200")
    sshd, ssh = _sshd(net, tmp_path)
    lerr_path = tmp_path / "listen.err"
    listener = net.popen("b", SCTPBOND + ["listen", "-v", "-t", "tcp", "-p", str(PORT), "--keep-open", "--relay",
                                          f"127.0.0.1:{SSH_PORT}"], stdin=subprocess.DEVNULL,
                         stderr=open(lerr_path, "w"))
    try:
        wait_listening(net, "b", PORT)
        # a command: its output and its exit status come back
        cmd = net.run("a", ssh + ["echo sctpbond-$((6*7)); exit 7"], capture_output=True, text=True, timeout=60,
                      stdin=subprocess.DEVNULL)
        assert cmd.returncode == 7, cmd.stderr
        assert cmd.stdout == "sctpbond-42\n", cmd.stderr

        # a few MiB through `ssh cat`, both ways at once
        data = random_file(tmp_path / "data", 8 * MiB)
        back = tmp_path / "back"
        with open(data, "rb") as fin, open(back, "wb") as fout:
            cat = net.run("a", ssh + ["cat"], stdin=fin, stdout=fout, stderr=subprocess.PIPE, text=False, timeout=120)
        assert cat.returncode == 0, cat.stderr
        assert sha256_file(back) == sha256_file(data)

        # upload only: the remote end checks what it got
        with open(data, "rb") as fin:
            digest = net.run("a", ssh + ["sha256sum"], stdin=fin, capture_output=True, text=True, timeout=120)
        assert digest.returncode == 0, digest.stderr
        assert digest.stdout.split()[0] == sha256_file(data)

        # every session closed in order (no failure logged) and the listener still serves
        text = wait_for_text(lerr_path, lambda t: t.count(" done: ") >= 3, 20)
        assert " failed" not in text and "Traceback" not in text, text
        assert listener.poll() is None, text
    finally:
        stop(listener, sshd)

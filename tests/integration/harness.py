"""Run real `sctpbond listen` / `sctpbond connect` processes inside a topology and check what arrived."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sctpbond.lab.topology import NETNS_DIR, Network

SCTPBOND = [sys.executable, "-m", "sctpbond"]
# Run as an ordinary user would: root's uid (so the test's files stay readable) but no capability at all, so
# SO_SNDBUFFORCE/SO_RCVBUFFORCE fail and net.core.wmem_max/rmem_max cap the socket buffers
UNPRIVILEGED = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
PORT = 7300

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def enter_netns(net: Network, host: str) -> None:
    """Move the calling thread into host's network namespace (for good: use a thread of its own)."""
    fd = os.open(NETNS_DIR / net.ns(host), os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(net: Network, host: str, fn):
    """Run fn() in a thread that has entered host's network namespace; what it creates stays there (a socket stays
    in the namespace it was made in, so a test drives it from any thread)."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            enter_netns(net, host)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=work, name=f"netns-{host}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_key(path: Path, secret: str) -> Path:
    """A key file as users must keep one: at least 16 bytes, readable by its owner only (mode 600)."""
    assert len(secret.strip()) >= 16, "sctpbond refuses keys under 16 bytes"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def random_file(path: Path, size: int) -> Path:
    """Incompressible test data (os.urandom), written in 4 MiB pieces to bound memory."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def wait_listening(net: Network, host: str, port: int, timeout: float = 60.0) -> None:
    """Until a TCP or SCTP socket listens on `port` in `host` (the VM's emulated CPU starts Python slowly)."""
    assert net.wait_listening(host, port, timeout), f"nothing listens on port {port} in host {host} after {timeout} s"


def free_port() -> int:
    """A TCP port nobody listens on in this namespace right now (loopback tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Until something listens on TCP `port` in this namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"no listener on port {port}")


def wait_for_text(path: Path, done, timeout: float) -> str:
    """The text of `path` (a log) once done(text) holds, or when `timeout` passes (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text()
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def stop(*procs: subprocess.Popen | None) -> None:
    """Kill and reap whatever is still running (tests must never leave processes behind)."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


@dataclass
class Side:
    rc: int
    stderr: str
    stats: dict = field(default_factory=dict)

    def path_bytes(self, key: str) -> list[int]:
        return [p[key] for p in sorted(self.stats.get("paths", []), key=lambda p: p["id"])]


@dataclass
class Result:
    listener: Side
    client: Side
    elapsed: float


def transfer(net: Network, tmp: Path, *, to_listener: Path | None, to_client: Path | None,
             client_args: list[str], listen_args: list[str] = (), addrs: list[str] | None = None,
             timeout: float = 120.0, during=None, port: int = PORT, client_env: dict | None = None,
             prefix: Sequence[str] = ()) -> Result:
    """Listener in host b, client in host a; files in, files out (tmp/out_l, tmp/out_c); both exit codes.
    `prefix` goes before both commands (e.g. UNPRIVILEGED)."""
    addrs = addrs if addrs is not None else [net.addr("b", i) for i in range(len(net.topo.links))]
    lstats, cstats = tmp / "listen.json", tmp / "connect.json"
    lcmd = [*prefix, *SCTPBOND, "listen", "-p", str(port), "-o", str(tmp / "out_l"), "--stats-json", str(lstats),
            *listen_args]
    ccmd = [*prefix, *SCTPBOND, "connect", "-p", str(port), "-o", str(tmp / "out_c"), "--stats-json",
            str(cstats), *client_args, *addrs]
    if to_client is None:
        lcmd.append("-N")
    if to_listener is None:
        ccmd.append("-N")
    else:
        ccmd += ["-i", str(to_listener)]
    lin = open(to_client, "rb") if to_client else subprocess.DEVNULL
    listener = net.popen("b", lcmd, stdin=lin, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(net, "b", port)
        start = time.monotonic()
        env = None if client_env is None else {**os.environ, **client_env}
        client = net.popen("a", ccmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            if during is not None:
                during(net, client, listener)
            _, cerr = client.communicate(timeout=timeout)
            _, lerr = listener.communicate(timeout=30)
        finally:
            stop(client, listener)
        elapsed = time.monotonic() - start
    finally:
        stop(listener)
        if lin is not subprocess.DEVNULL:
            lin.close()

    def load(path: Path) -> dict:
        return json.loads(path.read_text()) if path.exists() else {}

    return Result(Side(listener.returncode, lerr, load(lstats)), Side(client.returncode, cerr, load(cstats)),
                  elapsed)


def assert_ok(res: Result, tmp: Path, to_listener: Path | None = None, to_client: Path | None = None) -> None:
    """Both processes exited 0 and every byte sent arrived exactly (sha256) on the other side."""
    assert res.client.rc == 0, res.client.stderr
    assert res.listener.rc == 0, res.listener.stderr
    assert "Traceback" not in res.client.stderr + res.listener.stderr
    if to_listener is not None:
        assert sha256_file(tmp / "out_l") == sha256_file(to_listener)
        assert res.client.stats["bytes_acked"] == to_listener.stat().st_size
    if to_client is not None:
        assert sha256_file(tmp / "out_c") == sha256_file(to_client)
        assert res.listener.stats["bytes_acked"] == to_client.stat().st_size


def wait_for_bytes(path: Path, size: int, proc, timeout: float = 90.0) -> None:
    """Until the receiver has written `size` bytes: faults are injected while data is flowing, however long the
    emulated CPU takes to start two Python processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_size >= size:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {size} bytes (client rc {proc.poll()})")


class GrowthSampler:
    """(time, size) of a file a receiver writes, every `every` s, in a thread: a rate over the middle of a transfer
    leaves out process start-up and path joins at one end and the last chunks' drain at the other."""

    def __init__(self, path: Path, every: float = 0.05) -> None:
        self.path, self.every = path, every
        self.samples: list[tuple[float, int]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, *_ignored) -> None:  # usable as transfer(during=...)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.path.stat().st_size if self.path.exists() else 0))
            if self._stopped.wait(self.every):
                return

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def mbit_between(self, lo: int, hi: int) -> float:
        """Mbit/s from the first sample at or above `lo` bytes to the last one at or below `hi` bytes."""
        first = next(((t, n) for t, n in self.samples if n >= lo), None)
        last = next(((t, n) for t, n in reversed(self.samples) if n <= hi), None)
        if first is None or last is None or last[0] <= first[0]:
            raise AssertionError(f"no samples between {lo} and {hi} bytes: {self.samples}")
        return (last[1] - first[1]) * 8 / (last[0] - first[0]) / 1e6


BLOCKS = Path(__file__).with_name("blocks.py")  # the timestamped live stream


@dataclass(frozen=True)
class LiveStream:
    late_ms: list[float]  # each block's lateness, from a second before the fault on
    blocks: int  # every block the reader checked


def live_stream(net: Network, tmp: Path, *, args: Sequence[str], fault, rate_mbit: float, seconds: float,
                fault_after: float, timeout: float = 60.0) -> LiveStream:
    """`blocks.py write` into `sctpbond connect ARGS` in host a, `sctpbond listen | blocks.py read` in host b; once
    the first block has arrived and `fault_after` seconds more have passed, `fault()`. Asserts both exit codes,
    the reader's check of every block, and that no block is missing."""
    port = free_port()
    report, rcs = tmp / f"report-{port}.json", tmp / f"rc-{port}"
    started = Path(f"{report}.started")
    transport = [a for a in args if a in ("-t", "tcp", "sctp")][:2]
    listen = f"{' '.join(SCTPBOND)} listen {' '.join(transport)} -p {port} -q | {sys.executable} {BLOCKS} read {report}"
    listener = net.popen("b", ["bash", "-c", f'{listen}; echo "${{PIPESTATUS[@]}}" > {rcs}'],
                         stderr=subprocess.PIPE, text=True)
    client = None
    try:
        wait_listening(net, "b", port, timeout=120)
        connect = (f"{sys.executable} {BLOCKS} write {rate_mbit} {seconds} | {' '.join(SCTPBOND)} connect -q "
                   f"{' '.join(args)} -p {port}")
        client = net.popen("a", ["bash", "-o", "pipefail", "-c", connect], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not started.exists():
            assert client.poll() is None and time.monotonic() < deadline, "the stream never started"
            time.sleep(0.05)
        time.sleep(fault_after)
        fault_at = time.monotonic_ns()
        fault()
        _, cerr = client.communicate(timeout=timeout + seconds)
        _, lerr = listener.communicate(timeout=30)
    finally:
        stop(client, listener)
    assert client.returncode == 0, cerr
    assert rcs.read_text().split() == ["0", "0"], (rcs.read_text(), lerr)  # the listener, and every block right
    got = json.loads(report.read_text())
    assert got["blocks"] == int(seconds / (64 * 1024 * 8 / (rate_mbit * 1e6))), got["blocks"]  # none missing
    late = [ms for t, ms in zip(got["sent_ns"], got["late_ms"], strict=True) if t >= fault_at - 1_000_000_000]
    assert late, "the stream ended before the fault"
    return LiveStream(late, got["blocks"])

"""The attacks of the hardening issue, each against a real `sctpbond listen` (wire version 2, docs/wire-format.md).

Every test starts a listener in host b of a fresh 2-link topology, attacks it from host a with `wirepeer` (a peer
written from the wire-format document alone, not from the project's codec) or with an on-path `wirepeer.Forwarder`,
and then checks that the listener is still running, that no process printed a traceback, that what the attack
cost the listener stayed within the bounds below (peak memory from VmHWM, CPU time from /proc/PID/stat), and that
a real `sctpbond connect` is then served: both exit 0 and both directions arrive byte-exact (sha256).

  1. a HELLO with a window or max chunk outside the limits gets ABORT(PROTOCOL) instead of WELCOME;
  2. a HELLO or WELCOME rewritten on the way (keyed) makes the real client give up within 15 s, with one line;
  3. 24 silent keyed HELLOs from one address, re-dialled as they are dropped, do not keep a real client out;
  4. 120,000 one-byte DATA frames at odd offsets (never offset 0): refused at the 4097th range, cheaply;
  5. a PING flood from a peer that never reads: the listener's memory stays bounded;
  6. --no-encrypt: the frames are clear text but authenticated; a byte flipped on the way is never written;
  7. weak keys (short, readable by others) are refused at start; a stranger's WELCOME carries no MAC;
  8. frames before authentication: SEALED or DATA first, a FIN with the wrong digest length, a wrong AUTH.

The raw sockets live in host a's network namespace: a thread enters it (setns) and makes them there; a socket stays
in the namespace it was made in, so the test drives it from any thread.
"""

from __future__ import annotations

import os
import random
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from sctpbond.lab.topology import Network

from . import wirepeer as wp
from .harness import PORT, SCTPBOND, enter_netns, free_port, in_netns, random_file, sha256_file, stop, wait_for_text

pytestmark = pytest.mark.netns

MiB = 1 << 20
KiB = 1 << 10
FWD_PORT = 7401  # the on-path forwarder, 127.0.0.1 in host a
KEYED = wp.FLAG_KEYED | wp.FLAG_ENCRYPT
REJECTED = "rejected connection from "
# one log line per refused connection: "sctpbond: rejected connection from ADDR:PORT: why"
REJECTED_LINE = re.compile(r"^sctpbond: rejected connection from 10\.77\.\d+\.1:\d+: \S.*$")
# a keep-open listener's line for a session that ended in failure
SESSION_FAILED = re.compile(r"^sctpbond: session \d+ from \S+ failed: .*$", re.MULTILINE)
PATH_TIMEOUT = 30.0  # --path-timeout's default: how long a session with every path down waits for one to re-join
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- sockets inside a namespace ---------------------------------------------------------------------------------

def socket_in(net: Network, host: str) -> socket.socket:
    s = in_netns(net, host, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    assert isinstance(s, socket.socket)
    return s


# -- keys, processes ---------------------------------------------------------------------------------------------

def new_key() -> bytes:
    """32 printable random bytes (a key file is read stripped, so no byte of it may be white space)."""
    return os.urandom(16).hex().encode()


def write_key(path: Path, key: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(key + b"\n")
    os.chmod(path, mode)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SCTPBOND_KEY", "SCTPBOND_DEBUG")}
    return {**env, **extra}


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@dataclass
class Run:
    rc: int
    stderr: str
    elapsed: float


class Listener:
    """`sctpbond listen -v -t tcp` in host b, its stderr in a file the test reads while it runs.

    One-shot (the default): `-o out_l`, stdin from `to_client` (or -N). With keep_open: `--exec cat` (each session's
    stream comes back to its client) or, sink="files", `-o recv/recv-{n}.img` (nothing is sent back)."""

    def __init__(self, net: Network, tmp: Path, *, key: bytes | None = None, no_encrypt: bool = False,
                 keep_open: bool = False, sink: str = "exec", max_sessions: int | None = None,
                 to_client: Path | None = None) -> None:
        self.net, self.tmp, self.keep_open, self.sink, self.to_client = net, tmp, keep_open, sink, to_client
        self.key, self.no_encrypt = key, no_encrypt
        self.key_file = write_key(tmp / "listen.key", key) if key is not None else None
        self.out = tmp / "out_l"
        self.recv_dir = tmp / "recv"
        self.recv_dir.mkdir(exist_ok=True)
        self.err_path = tmp / "listen.err"
        cmd = SCTPBOND + ["listen", "-v", "-t", "tcp", "-p", str(PORT)]
        if self.key_file is not None:
            cmd += ["--key-file", str(self.key_file)]
        if no_encrypt:
            cmd.append("--no-encrypt")
        if keep_open:
            cmd.append("--keep-open")
            if max_sessions is not None:
                cmd += ["--max-sessions", str(max_sessions)]
            cmd += ["--exec", "cat"] if sink == "exec" else ["-o", str(self.recv_dir / "recv-{n}.img")]
        else:
            cmd += ["-o", str(self.out), "--stats-json", str(tmp / "listen.json")]
            if to_client is None:
                cmd.append("-N")
        # both stay open for the listener's whole life; close() closes them
        self._err = open(self.err_path, "w")  # noqa: SIM115
        self._stdin = open(to_client, "rb") if to_client is not None else None  # noqa: SIM115
        self.proc = net.popen("b", cmd, stdin=self._stdin or subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=self._err, env=clean_env())
        assert net.wait_listening("b", PORT, 60, check=self.alive), f"no listener on port {PORT}:\n{self.stderr()}"

    def settle(self) -> None:
        """Until the listener has printed its last start-up line (it imports more after listen()): a baseline for
        its memory and CPU taken after this excludes its start."""
        wait_for_text(self.err_path, lambda t: "listening on" in t, 15)
        time.sleep(0.3)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def rejections(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if REJECTED in line]

    def wait_rejections(self, n: int, timeout: float = 10.0) -> list[str]:
        """The rejection lines, once there are at least n (fails after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while len(lines := self.rejections()) < n and time.monotonic() < deadline:
            self.alive()
            time.sleep(0.05)
        assert len(lines) >= n, f"expected {n} rejection lines, got {len(lines)}:\n{self.stderr()}"
        return lines

    def wait_session_failed(self, timeout: float = 15.0) -> str:
        """The line of a session that ended in failure, within `timeout` s: an aborted session ends at once, not
        when its paths' PATH_TIMEOUT s to re-join run out (what a session that merely lost its path does)."""
        text = wait_for_text(self.err_path, lambda t: SESSION_FAILED.search(t) is not None, timeout)
        m = SESSION_FAILED.search(text)
        assert m, f"no session ended in failure within {timeout} s:\n{text}"
        return m.group(0)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the listener ended (rc {self.proc.returncode}):\n{self.stderr()}"

    def vm_hwm_kib(self) -> int:
        """Peak resident memory so far (VmHWM), KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def cpu_s(self) -> float:
        """CPU time used so far, user + system, in seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime and stime: fields 14 and 15 of stat(5)

    def recv_files(self) -> set[Path]:
        return set(self.recv_dir.iterdir())

    def close(self) -> None:
        stop(self.proc)
        self._err.close()
        if self._stdin is not None:
            self._stdin.close()


class Lab:
    """One topology, the listener under attack, and the helpers the attacks share."""

    def __init__(self, net: Network, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.listener: Listener | None = None
        self.forwarders: list[wp.Forwarder] = []
        self.procs: list[subprocess.Popen] = []
        self.b0, self.b1 = net.addr("b", 0), net.addr("b", 1)
        self.a0, self.a1 = net.addr("a", 0), net.addr("a", 1)

    def listen(self, **kw: object) -> Listener:
        assert self.listener is None
        self.listener = Listener(self.net, self.tmp, **kw)  # type: ignore[arg-type]
        return self.listener

    def dial(self, addr: str | None = None, source: str | None = None) -> socket.socket:
        """A raw TCP connection from host a to the listener."""
        s = socket_in(self.net, "a")
        if source is not None:
            s.bind((source, 0))
        s.settimeout(5)
        s.connect((addr or self.b0, PORT))
        return s

    def peer(self, *, key: bytes | None = None, encrypt: bool = True, addr: str | None = None,
             sock: socket.socket | None = None, source: str | None = None) -> wp.Peer:
        return wp.Peer((addr or self.b0, PORT), sock=sock or socket_in(self.net, "a"), source=source, key=key,
                       encrypt=encrypt)

    def forwarder(self, hook: wp.Hook, target: str | None = None) -> wp.Forwarder:
        """An on-path relay in host a, 127.0.0.1:FWD_PORT -> target:PORT (each upstream made in host a too)."""
        fwd = in_netns(self.net, "a", lambda: wp.Forwarder(
            ("127.0.0.1", FWD_PORT), (target or self.b0, PORT), hook=hook,
            make_socket=lambda: socket_in(self.net, "a")))
        assert isinstance(fwd, wp.Forwarder)
        self.forwarders.append(fwd)
        return fwd

    def client(self, *, up: Path, out: Path, key_file: Path | None = None, no_encrypt: bool = False,
               addrs: list[str] | None = None, extra: tuple[str, ...] = (), timeout: float = 90.0,
               name: str = "client") -> Run:
        """A real `sctpbond connect` in host a: sends `up`, writes what comes back to `out`."""
        cmd = SCTPBOND + ["connect", "-t", "tcp", "-p", str(PORT), "-i", str(up), "-o", str(out),
                          "--stats-json", str(self.tmp / f"{name}.json")]
        if key_file is not None:
            cmd += ["--key-file", str(key_file)]
        if no_encrypt:
            cmd.append("--no-encrypt")
        cmd += [*extra, *(addrs if addrs is not None else [self.b0, self.b1])]
        start = time.monotonic()
        proc = self.net.popen("a", cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=clean_env())
        self.procs.append(proc)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise AssertionError(f"{name}: `sctpbond connect` still running after {timeout} s") from None
        return Run(proc.returncode, err, time.monotonic() - start)

    def served(self, *, up_size: int = 4 * MiB, extra: tuple[str, ...] = (), addrs: list[str] | None = None,
               name: str = "real") -> None:
        """The real client after (or during) the attack: exit 0, byte-exact both ways, and the listener is fine
        (one-shot: exits 0; keep-open: still running)."""
        listener = self.listener
        assert listener is not None
        listener.alive()
        up = random_file(self.tmp / f"{name}.up", up_size)
        back = self.tmp / f"{name}.back"
        files_before = listener.recv_files()
        key_file = None
        if listener.key is not None:
            key_file = write_key(self.tmp / f"{name}.key", listener.key)
        run = self.client(up=up, out=back, key_file=key_file, no_encrypt=listener.no_encrypt, addrs=addrs,
                          extra=extra, name=name)
        assert run.rc == 0, f"the real client failed (rc {run.rc}):\n{run.stderr}\nlistener:\n{listener.stderr()}"
        no_traceback(run.stderr)
        if listener.keep_open:
            listener.alive()
            if listener.sink == "exec":
                assert sha256_file(back) == sha256_file(up), "the stream did not come back byte-exact"
            else:
                new = listener.recv_files() - files_before
                assert len(new) == 1, f"expected one new session file, got {sorted(new)}"
                assert sha256_file(new.pop()) == sha256_file(up)
                assert not back.exists() or back.stat().st_size == 0
        else:
            try:
                rc = listener.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the one-shot listener did not end:\n{listener.stderr()}") from None
            assert rc == 0, f"listener rc {rc}:\n{listener.stderr()}"
            assert sha256_file(listener.out) == sha256_file(up)
            if listener.to_client is not None:
                assert sha256_file(back) == sha256_file(listener.to_client)
        no_traceback(listener.stderr())

    def close(self) -> None:
        for fwd in self.forwarders:
            fwd.close()
        stop(*self.procs)
        if self.listener is not None:
            self.listener.close()


@pytest.fixture
def lab(netns_topology: Callable[[str], Network], tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(netns_topology("2x200"), tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def check_one_line_each(lines: list[str]) -> None:
    for line in lines:
        assert REJECTED_LINE.match(line), line


def refused(sock: socket.socket, timeout: float = 3.0, code: int = wp.PROTOCOL) -> None:
    """The listener closed this connection within `timeout` s, having sent nothing or one ABORT(code)."""
    closed, got = wp.wait_closed(sock, timeout)
    assert closed, f"the connection is still open after {timeout} s (got {got[:32]!r})"
    frames, rest = wp.split_frames(got)
    assert not rest and len(frames) <= 1, f"unexpected answer {got[:64]!r}"
    for f in frames:
        assert f[0] == wp.ABORT and wp.parse_abort(f[8:])[0] == code, f"unexpected answer {f[:64]!r}"


def expect_abort(sock: socket.socket, code: int, timeout: float = 10.0) -> str:
    """The next frame is ABORT(code) and the listener then closes: its reason."""
    got = wp.read_frame(sock, timeout)
    assert got is not None, "closed without an ABORT"
    assert got[0] == wp.ABORT, f"expected ABORT, got frame type {got[0]} ({len(got[1])} bytes)"
    got_code, reason = wp.parse_abort(got[1])
    assert got_code == code, f"ABORT code {got_code} ({reason!r}), expected {code}"
    closed, rest = wp.wait_closed(sock, 5)
    assert closed and not rest, f"after ABORT: closed {closed}, then {rest[:32]!r}"
    return reason


def session_ended(peer: wp.Peer, timeout: float) -> list[int]:
    """Read session frames until the listener closes: the ABORT codes it sent (fails if still open at timeout).
    A frame that cannot be opened counts as the end, too."""
    codes: list[int] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            got = peer.recv(timeout=left)
        except TimeoutError:
            break
        except wp.WireError as exc:
            raise AssertionError(f"the listener sent something invalid: {exc}") from None
        if got is None:
            return codes
        if got[0] == wp.ABORT:
            codes.append(wp.parse_abort(got[1])[0])
            closed, _ = wp.wait_closed(peer.sock, 5)
            assert closed, "the listener sent ABORT and left the connection open"
            return codes
    raise AssertionError(f"the session is still open after {timeout} s")


def is_prefix(out: Path, full: bytes) -> bool:
    return not out.exists() or full.startswith(out.read_bytes())


# -- 1. window and max chunk outside the limits ---------------------------------------------------------------------

BAD_HELLOS: list[dict[str, int]] = [
    {"window": 0},
    {"max_chunk": 0},
    {"max_chunk": MiB + 1},
    {"max_chunk": 1},  # below 65536
    {"window": 4 * 256 * KiB - 1, "max_chunk": 256 * KiB},  # window < 4 x max chunk
    {"window": 1 << 40},  # over 2^32
]


def bad_hello_refused(lab: Lab, fields: dict[str, int]) -> None:
    with lab.peer() as p:
        p.send_hello(**fields)
        expect_abort(p.sock, wp.PROTOCOL)


def test_bad_window_or_chunk_one_shot(lab: Lab) -> None:
    """Each bad HELLO gets ABORT(PROTOCOL) (no WELCOME) and one log line; the one-shot listener creates no -o
    file for it, keeps waiting and then serves the real client."""
    listener = lab.listen(to_client=random_file(lab.tmp / "down", 2 * MiB))
    for fields in BAD_HELLOS:
        bad_hello_refused(lab, fields)
    lines = listener.wait_rejections(len(BAD_HELLOS))
    assert len(lines) == len(BAD_HELLOS), lines
    check_one_line_each(lines)
    assert not listener.out.exists(), "a refused HELLO created the output file"
    listener.alive()
    lab.served()
    assert len(listener.rejections()) == len(BAD_HELLOS)


def test_bad_window_or_chunk_keep_open(lab: Lab) -> None:
    """Five bad keyless HELLOs at a `--keep-open --max-sessions 2` listener take no session slot and create no
    file; a real client is then served."""
    listener = lab.listen(keep_open=True, sink="files", max_sessions=2)
    for i in range(5):
        bad_hello_refused(lab, BAD_HELLOS[i % len(BAD_HELLOS)])
    lines = listener.wait_rejections(5)
    assert len(lines) == 5, lines
    check_one_line_each(lines)
    assert not listener.recv_files(), sorted(listener.recv_files())
    listener.alive()
    lab.served()
    assert len(listener.rejections()) == 5


# -- 2. handshake rewritten on the way (keyed) ----------------------------------------------------------------------

@pytest.mark.parametrize("direction, fields", [
    pytest.param(wp.C2S, {"max_chunk": 1}, id="hello-max-chunk-1"),
    pytest.param(wp.C2S, {"window": 8 * MiB}, id="hello-window"),  # a valid value: only the MACs can tell
    pytest.param(wp.S2C, {"window": 8 * MiB}, id="welcome-window"),
])
def test_rewritten_handshake(lab: Lab, direction: str, fields: dict[str, int]) -> None:
    """An on-path forwarder rewrites HELLO (or WELCOME) between a real keyed client and a keyed listener: the
    client gives up within 15 s with one line, the listener keeps waiting and then serves a direct client."""
    key = new_key()
    listener = lab.listen(key=key, to_client=random_file(lab.tmp / "down", 2 * MiB))
    rewrites: list[int] = []

    def hook(relay: wp.Relay, d: str, frame: bytes) -> bytes:
        if d != direction or relay.frames[d] != 1:  # the first frame each way: HELLO, WELCOME
            return frame
        rewrites.append(relay.index)
        return wp.rewrite_hello(frame, **fields) if d == wp.C2S else wp.welcome_with(frame, **fields)

    fwd = lab.forwarder(hook)
    up = random_file(lab.tmp / "up", 1 * MiB)
    run = lab.client(up=up, out=lab.tmp / "out_c", key_file=write_key(lab.tmp / "client.key", key),
                     addrs=[f"127.0.0.1:{FWD_PORT}"], extra=("--no-auto",), timeout=30, name="victim")
    assert not fwd.errors, fwd.errors
    assert rewrites, "the forwarder saw no handshake"
    assert run.rc != 0, f"the client accepted a rewritten handshake:\n{run.stderr}"
    print(f"\nFIGURE rewritten-{direction}: the client gave up after {run.elapsed:.2f} s")  # docs/security.md table
    assert run.elapsed < 15, f"the client took {run.elapsed:.1f} s to give up"
    no_traceback(run.stderr)
    assert last_line(run.stderr).startswith("sctpbond:"), run.stderr
    lines = listener.wait_rejections(1)
    check_one_line_each(lines)
    assert not listener.out.exists(), "a failed handshake created the output file"
    listener.alive()
    fwd.close()
    lab.served()


# -- 3. handshake slots -------------------------------------------------------------------------------------------

class Squatter:
    """`n` connections from one address, each sending a valid keyed HELLO(NEW) and then nothing; each one the
    listener drops is dialled again at once (in a thread of its own, inside host a's namespace)."""

    def __init__(self, net: Network, n: int, source: str, target: tuple[str, int]) -> None:
        self.net, self.n, self.source, self.target = net, n, source, target
        self.dials = self.welcomed = self.refused = self.timed_out = self.connect_errors = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="squatter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _dial(self) -> socket.socket | None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((self.source, 0))
            s.settimeout(2)
            s.connect(self.target)
            s.sendall(wp.hello(flags=KEYED))
        except OSError:
            s.close()
            self.connect_errors += 1
            return None
        self.dials += 1
        return s

    def _run(self) -> None:
        socks: dict[socket.socket, bool] = {}  # -> has it had a WELCOME
        try:
            enter_netns(self.net, "a")
            while not self._stop.is_set():
                while len(socks) < self.n and not self._stop.is_set():
                    s = self._dial()
                    if s is None:
                        time.sleep(0.05)
                        break
                    socks[s] = False
                for s in select.select(list(socks), [], [], 0.1)[0]:
                    try:
                        got = s.recv(4096)
                    except OSError:
                        got = b""
                    if got:
                        if not socks[s] and got[0] == wp.WELCOME:
                            socks[s] = True
                            self.welcomed += 1
                        continue
                    if socks[s]:
                        self.timed_out += 1  # answered, then dropped (the handshake deadline)
                    else:
                        self.refused += 1  # dropped without a WELCOME (no slot for this address)
                    del socks[s]
                    s.close()
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - the test re-raises it
            self.error = exc
        finally:
            for s in socks:
                s.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None:
            raise self.error


def test_unauthenticated_connections_take_no_session(lab: Lab) -> None:
    """24 silent keyed HELLOs from a0 (re-dialled as they are dropped, all the while) against a keyed
    `--keep-open --max-sessions 16` listener: at most 8 pending handshakes per address, and a session counts only
    once AUTH verified, so a real client from a1 gets its session."""
    key = new_key()
    listener = lab.listen(key=key, keep_open=True, sink="exec", max_sessions=16)
    squatter = Squatter(lab.net, 24, lab.a0, (lab.b0, PORT))
    squatter.start()
    try:
        deadline = time.monotonic() + 10
        while (squatter.dials < 24 or not squatter.welcomed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert squatter.dials >= 24 and squatter.welcomed, vars(squatter)
        lab.served(addrs=[], extra=("--no-auto", "--path", f"{lab.a1}={lab.b1}"))
        listener.alive()
    finally:
        squatter.stop()
    # the 24 were not all taken in: the per-address limit dropped some at once
    assert squatter.refused > 0, vars(squatter)
    no_traceback(listener.stderr())
    assert not [line for line in listener.rejections() if not REJECTED_LINE.match(line)]


# -- 4. reorder buffer ---------------------------------------------------------------------------------------------

def test_reorder_buffer_blow_up(lab: Lab) -> None:
    """120,000 one-byte DATA frames at offsets 1, 3, 5, ... (offset 0 never comes): the receiver holds at most 4096
    ranges and aborts the session; on the way the listener's peak memory grows by 24 MiB at most and it spends at
    most 3 CPU seconds."""
    listener = lab.listen(keep_open=True, sink="exec")
    listener.settle()
    hwm0, cpu0 = listener.vm_hwm_kib(), listener.cpu_s()
    n = 120_000
    with lab.peer() as p:
        p.handshake(window=64 * MiB, max_chunk=256 * KiB)
        frames = [wp.data(2 * i + 1, b"\xa5") for i in range(n)]
        p.sock.settimeout(20)
        try:
            for k in range(0, n, 8192):
                p.sock.sendall(b"".join(frames[k: k + 8192]))
        except OSError:
            pass  # the listener aborted the session and closed: what is expected
        codes = session_ended(p, 20)
        assert all(c == wp.PROTOCOL for c in codes), codes
    # the session was aborted for what it was sent, not merely left to wait for its path to re-join
    listener.wait_session_failed(timeout=PATH_TIMEOUT / 2)
    grown, cpu = listener.vm_hwm_kib() - hwm0, listener.cpu_s() - cpu0
    print(f"\nFIGURE reorder-blow-up: peak memory +{grown} KiB, {cpu:.2f} CPU-s")  # docs/security.md table
    assert grown <= 24 * KiB, f"the listener's peak memory grew by {grown} KiB"
    assert cpu <= 3.0, f"the listener spent {cpu:.2f} CPU seconds"
    listener.alive()
    lab.served()


# -- 5. PING flood ----------------------------------------------------------------------------------------------------

def test_ping_flood_from_a_peer_that_never_reads(lab: Lab) -> None:
    """16 MiB of PINGs from a peer with a 4 KiB receive buffer that never reads: a PING waiting for its PONG is
    replaced by the next, so the listener's peak memory grows by 16 MiB at most."""
    listener = lab.listen(keep_open=True, sink="exec")
    listener.settle()
    hwm0 = listener.vm_hwm_kib()
    sock = socket_in(lab.net, "a")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window it advertises
    with lab.peer(sock=sock) as p:
        p.handshake()
        batch = b"".join(wp.ping(i) for i in range(4096))  # 64 KiB
        sent, deadline = 0, time.monotonic() + 45
        p.sock.settimeout(10)
        try:
            while sent < 16 * MiB and time.monotonic() < deadline:
                p.sock.sendall(batch)
                sent += len(batch)
        except OSError:
            pass  # the listener failed the path (we accept nothing) or stopped reading: both fine
    time.sleep(0.3)
    grown = listener.vm_hwm_kib() - hwm0
    print(f"\nFIGURE ping-flood: {sent} bytes of PINGs sent, peak memory +{grown} KiB")  # docs/security.md table
    assert grown <= 16 * KiB, f"the listener's peak memory grew by {grown} KiB after {sent} bytes of PINGs"
    listener.alive()
    lab.served()


# -- 6. --no-encrypt: clear text, but authenticated --------------------------------------------------------------------

_INVERT = bytes(255 - i for i in range(256))  # bytes.translate table: every bit flipped


class Tamper:
    """The forwarder's hook, without the key (the tags stay as they were): checks that AUTHED frames carry plain
    DATA (the input's bytes at their offsets) and alters them. `once`: the byte at stream position FLIP_AT, in the
    first connection's DATA frame that holds it; `every`: every payload byte of every DATA frame, on every
    connection. FINs (on the first connection, or on all) get the digest of the stream so altered, computed in
    advance (a FIN may pass before the last DATA frames): only the listener's check of the tags can catch it."""

    FLIP_AT = 1000

    def __init__(self, up: bytes, mode: str) -> None:
        self.up, self.mode = up, mode
        if mode == "once":
            altered = bytearray(up)
            altered[self.FLIP_AT] ^= 0xFF
            self.digest = xxhash.xxh3_128(bytes(altered)).digest()
        else:
            self.digest = xxhash.xxh3_128(up.translate(_INVERT)).digest()
        self.lock = threading.Lock()
        self.plain_data = self.mismatched = self.flips = self.fins = 0
        self.inner_types: set[int] = set()

    def hook(self, relay: wp.Relay, direction: str, frame: bytes) -> bytes:
        if direction != wp.C2S or frame[0] != wp.AUTHED:
            return frame
        t, seq, inner, tag = wp.split_wrapped(frame)
        itype, _, _, ilen = wp.parse_header(inner)
        assert ilen == len(inner) - wp.HEADER_LEN, "the AUTHED body is not seq | inner frame | tag"
        with self.lock:
            self.inner_types.add(itype)
            if itype == wp.DATA:
                offset, payload = wp.parse_data(inner[wp.HEADER_LEN:])
                self.plain_data += 1
                if payload != self.up[offset: offset + len(payload)]:
                    self.mismatched += 1
                if self.mode == "every":
                    payload = payload.translate(_INVERT)
                elif relay.index == 0 and not self.flips and offset <= self.FLIP_AT < offset + len(payload):
                    pos = self.FLIP_AT - offset
                    payload = payload[:pos] + bytes([payload[pos] ^ 0xFF]) + payload[pos + 1:]
                else:
                    return frame
                self.flips += 1
                inner = wp.data(offset, payload)
            elif itype == wp.FIN and (self.mode == "every" or relay.index == 0):
                total, _ = wp.parse_fin(inner[wp.HEADER_LEN:])
                self.fins += 1
                inner = wp.fin(total, self.digest)
            else:
                return frame
        return wp.join_wrapped(t, seq, inner, tag)


@pytest.mark.parametrize("mode", ["once", "every"])
def test_no_encrypt_frames_are_authenticated(lab: Lab, mode: str) -> None:
    """Keyed --no-encrypt session through a forwarder that flips payload bytes inside AUTHED frames (and forges
    the FIN digest to match): the listener never writes the altered bytes. `once`: the transfer completes
    byte-exact (the path failed and was re-dialled) or both exit 1; `every`: the session aborts, both exit 1, the
    output an exact prefix of the input (or absent)."""
    key = new_key()
    down = random_file(lab.tmp / "down", 2 * MiB)
    listener = lab.listen(key=key, no_encrypt=True, to_client=down)
    up = random_file(lab.tmp / "up", 6 * MiB)
    up_bytes = up.read_bytes()
    tamper = Tamper(up_bytes, mode)
    fwd = lab.forwarder(tamper.hook)
    out_c = lab.tmp / "out_c"
    run = lab.client(up=up, out=out_c, key_file=write_key(lab.tmp / "client.key", key), no_encrypt=True,
                     addrs=[f"127.0.0.1:{FWD_PORT}"], extra=("--no-auto",), timeout=90, name="tampered")
    try:
        lrc = listener.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the listener did not end:\n{listener.stderr()}") from None
    connections = len(fwd.relays)
    fwd.close()
    assert not fwd.errors, fwd.errors
    no_traceback(run.stderr, listener.stderr())
    # the wire is clear text: plain DATA frames (the input's own bytes) inside the AUTHED bodies
    assert wp.DATA in tamper.inner_types and tamper.plain_data > 0, tamper.inner_types
    assert tamper.mismatched == 0, f"{tamper.mismatched} DATA payloads differ from the input"
    assert tamper.flips, "the forwarder flipped nothing"
    if mode == "once" and run.rc == 0:
        assert lrc == 0, listener.stderr()
        assert sha256_file(listener.out) == sha256_file(up), "exit 0 with altered bytes"
        assert sha256_file(out_c) == sha256_file(down)
        assert connections >= 2, "the tampered path was not re-dialled"
    else:
        assert (run.rc, lrc) == (1, 1), f"client {run.rc}: {run.stderr}\nlistener {lrc}: {listener.stderr()}"
        assert is_prefix(listener.out, up_bytes), "the listener wrote bytes that are not the input's"
    if mode == "every":
        assert connections >= 4, f"the session ended after {connections} connections, not after >3 path failures"


# -- 7. weak keys; nothing computed from the key before it is proved ---------------------------------------------

@pytest.mark.parametrize("command", ["listen", "connect"])
@pytest.mark.parametrize("case", ["short", "readable", "env-short"])
def test_weak_keys_are_refused(tmp_path: Path, command: str, case: str) -> None:
    port = free_port()
    argv = ["listen", "-t", "tcp", "-p", str(port), "-N"] if command == "listen" else \
        ["connect", "-t", "tcp", "-p", str(port), "127.0.0.1", "-N"]
    env = clean_env()
    needle: str | None = None
    if case == "short":
        argv += ["--key-file", str(write_key(tmp_path / "key", b"7 bytes"))]
        needle = "16"
    elif case == "readable":
        argv += ["--key-file", str(write_key(tmp_path / "key", new_key(), mode=0o644))]
        needle = "chmod 600"
    else:
        env["SCTPBOND_KEY"] = "short"
    try:
        res = subprocess.run(SCTPBOND + argv, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL,
                             env=env)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`sctpbond {command}` ran on with a weak key ({case})") from None
    assert res.returncode == 2, f"rc {res.returncode}: {res.stderr}"
    no_traceback(res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sctpbond:"), res.stderr
    if needle is not None:
        assert needle in lines[0], res.stderr


def test_a_stranger_learns_nothing_computed_from_the_key(lab: Lab) -> None:
    """WELCOME carries no MAC (45 + 17 n bytes, nothing but its fields); a wrong AUTH gets ABORT(AUTH) and no
    READY; the one-shot listener then serves the real client."""
    listener = lab.listen(key=new_key(), to_client=random_file(lab.tmp / "down", 2 * MiB))
    with lab.peer() as p:
        p.send_hello(flags=KEYED)  # claims a key it does not have
        w = p.read_welcome()
        n = len(w.addresses)
        assert n <= 16 and len(w.body) == wp.WELCOME_MIN + wp.ADDRESS_LEN * n, len(w.body)
        assert {lab.b0, lab.b1} <= set(w.ipv4()), w.ipv4()
        # nothing but the fields: the frame is exactly their encoding
        assert wp.welcome(w.token, w.nonce, w.window, w.max_chunk, w.addresses) == w.frame
        p.send_auth(os.urandom(wp.MAC_LEN))
        expect_abort(p.sock, wp.AUTH_FAILED)
    lines = listener.wait_rejections(1)
    assert len(lines) == 1, lines
    check_one_line_each(lines)
    listener.alive()
    lab.served()


# -- 8. before authentication ---------------------------------------------------------------------------------------

def test_session_frames_first_are_refused_from_the_header(lab: Lab) -> None:
    """A SEALED header claiming ~1 MiB as the first frame is refused from its 8 bytes (closed at once, one line),
    50 times over without the listener's peak memory growing by 2 MiB; DATA (or AUTHED) first likewise."""
    listener = lab.listen(key=new_key(), to_client=random_file(lab.tmp / "down", 2 * MiB))
    listener.settle()
    sealed = wp.header(wp.SEALED, MiB) + b"\xab" * 1000

    def attempt(blob: bytes, addr: str) -> None:
        s = lab.dial(addr)
        try:
            s.sendall(blob)
            refused(s, 3)  # at once, not at the 5 s handshake deadline
        finally:
            s.close()

    attempt(sealed, lab.b0)  # the first refusal may import and allocate what every later one reuses
    listener.wait_rejections(1)
    hwm0 = listener.vm_hwm_kib()
    for i in range(50):
        attempt(sealed, lab.b1 if i % 2 else lab.b0)
    lines = listener.wait_rejections(51)
    grown = listener.vm_hwm_kib() - hwm0
    print(f"\nFIGURE sealed-headers: 50 x 1 MiB claimed, peak memory +{grown} KiB")  # docs/security.md table
    assert grown <= 2 * KiB, f"50 SEALED headers grew the listener's peak memory by {grown} KiB"
    others = [wp.header(wp.DATA, 8 + MiB) + b"\xab" * 1000, wp.data(0, b"hello"),
              wp.header(wp.AUTHED, 8 + 8 + 8 + 16) + bytes(40)]
    for blob in others:
        attempt(blob, lab.b0)
    total = 51 + len(others)
    lines = listener.wait_rejections(total)
    assert len(lines) == total, lines
    check_one_line_each(lines)
    assert not listener.out.exists()
    listener.alive()
    lab.served()


@pytest.mark.parametrize("digest_len", [0, 8, 32])
def test_fin_with_a_wrong_digest_length_aborts_the_session(lab: Lab, digest_len: int) -> None:
    """A FIN's body is exactly 24 bytes (total u64 + 16-byte digest): any other is refused, the session aborted;
    the keep-open listener goes on."""
    listener = lab.listen(keep_open=True, sink="exec")
    with lab.peer() as p:
        p.handshake()
        p.send(wp.fin(0, bytes(range(digest_len))))
        codes = session_ended(p, 10)
        assert all(c == wp.PROTOCOL for c in codes), codes
    listener.wait_session_failed(timeout=PATH_TIMEOUT / 2)
    listener.alive()
    lab.served()


def test_wrong_auth_or_garbage_does_not_end_a_one_shot_listener(lab: Lab) -> None:
    """A keyed one-shot listener: a HELLO then a wrong AUTH, a HELLO then garbage, then a real client with another
    key: one line each for the raw ones, the wrong-key client exits 1 saying so, and the listener still serves the
    right client (both exit 0)."""
    key = new_key()
    listener = lab.listen(key=key, to_client=random_file(lab.tmp / "down", 2 * MiB))
    with lab.peer() as p:
        p.send_hello(flags=KEYED)
        p.read_welcome()
        p.send_auth(os.urandom(wp.MAC_LEN))
        expect_abort(p.sock, wp.AUTH_FAILED)
    with lab.peer() as p:
        p.send_hello(flags=KEYED)
        p.read_welcome()
        p.sock.sendall(b"\xee" + random.Random(8).randbytes(39))
        refused(p.sock, 10)
    lines = listener.wait_rejections(2)
    assert len(lines) == 2, lines
    check_one_line_each(lines)
    listener.alive()
    assert not listener.out.exists()
    wrong = lab.client(up=random_file(lab.tmp / "wrong.up", 1 * MiB), out=lab.tmp / "wrong.back",
                       key_file=write_key(lab.tmp / "wrong.key", new_key()), addrs=[lab.b0], timeout=30,
                       name="wrong")
    assert wrong.rc == 1, f"rc {wrong.rc}: {wrong.stderr}"
    no_traceback(wrong.stderr)
    line = last_line(wrong.stderr)
    assert line.startswith("sctpbond:") and "key" in line, wrong.stderr
    listener.alive()
    assert not listener.out.exists(), "a wrong key created the output file"
    lab.served()

"""The lab's own helper processes, started by the bench in host a or b: the MPTCP (or plain TCP) receiver and
sender fed from a pipe, and the data generator; also a plot redrawer. Kept light (no click, no pyroute2): each
start-up is paid inside the measurement's namespaces, on emulated CPUs in the VM.

``python -m sctpbond.lab.helper stream-recv|stream-send|gen|plot``
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..host import IPPROTO_MPTCP

MPTCP_PORT = 7400


def _stream_recv(port: int, proto: int) -> None:
    """Accept one MPTCP (or TCP) connection, discard what it sends, print {"bytes", "seconds"} (accept to EOF)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    srv.settimeout(60)
    conn, _ = srv.accept()
    conn.settimeout(120)
    t0 = time.monotonic()
    buf = bytearray(1 << 20)
    total = calls = 0
    subflows = None
    while n := conn.recv_into(buf):
        total += n
        calls += 1
        if proto == IPPROTO_MPTCP and calls % 256 == 1:
            with contextlib.suppress(OSError):
                # struct mptcp_info (SOL_MPTCP=284, MPTCP_INFO=1): byte 0 is mptcpi_subflows, the subflows
                # besides the initial one; keep the most seen (they close at the end).
                seen = conn.getsockopt(284, 1, 64)[0] + 1
                subflows = max(subflows or 0, seen)
    seconds = time.monotonic() - t0
    conn.close()
    print(json.dumps({"bytes": total, "seconds": seconds, "subflows": subflows}), flush=True)


def _stream_send(addr: str, port: int, proto: int) -> None:
    """Send stdin over one MPTCP (or TCP) connection, then wait for the receiver to close (all delivered)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.settimeout(10)
    sock.connect((addr, port))
    sock.settimeout(None)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.fcntl(0, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    while n := os.readv(0, [buf]):
        sock.sendall(view[:n])
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    sock.close()


def _wait_reader_started(fd: int, limit: float = 600.0) -> None:
    """Block until the reader of pipe fd has taken some of what is in it (FIONREAD falls), or `limit` passes.

    The reader may have grown the pipe to hold our whole first block, so a completed write proves nothing."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return
    first = buf[0]
    deadline = time.monotonic() + limit
    while first and time.monotonic() < deadline:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        if buf[0] < first:
            return
        time.sleep(0.005)


def _gen(size: int | None, seconds: float | None, random_data: bool) -> None:
    """Write size bytes (or for `seconds`) of zeros or random data to stdout."""
    block = bytearray(1 << 20)
    deadline = None
    left = size if size is not None else -1
    try:
        while left != 0 and (deadline is None or time.monotonic() < deadline):
            n = len(block) if left < 0 else min(left, len(block))
            view = memoryview(os.urandom(n) if random_data else block)[:n]
            while view:
                view = view[os.write(1, view):]
            if left > 0:
                left -= n
            if deadline is None and seconds is not None:
                _wait_reader_started(1)
                deadline = time.monotonic() + seconds
    except BrokenPipeError:
        pass


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sctpbond.lab.helper")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("stream-recv")
    r.add_argument("--port", type=int, default=MPTCP_PORT)
    r.add_argument("--proto", type=int, default=IPPROTO_MPTCP)
    s = sub.add_parser("stream-send")
    s.add_argument("addr")
    s.add_argument("--port", type=int, default=MPTCP_PORT)
    s.add_argument("--proto", type=int, default=IPPROTO_MPTCP)
    pl = sub.add_parser("plot", help="redraw the plot of a --json report")
    pl.add_argument("json")
    pl.add_argument("png")
    g = sub.add_parser("gen")
    g.add_argument("--size", type=int)
    g.add_argument("--seconds", type=float)
    g.add_argument("--random", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "stream-recv":
            _stream_recv(a.port, a.proto)
        elif a.cmd == "stream-send":
            _stream_send(a.addr, a.port, a.proto)
        elif a.cmd == "plot":
            from .report import replot  # matplotlib: only for this

            replot(Path(a.json), Path(a.png))
        else:
            _gen(a.size, a.seconds, a.random)
    except OSError as exc:
        print(f"{a.cmd}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])

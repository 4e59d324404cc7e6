"""A live stream with a clock in it: `write RATE_MBIT SECONDS` sends 64 KiB blocks at that rate, each stamped
with its sequence number and CLOCK_MONOTONIC (shared by every network namespace of one host); `read REPORT`
checks every block (order, content) and writes, as JSON, when each was sent and how late it arrived; REPORT.started
appears when the first block has arrived (so a test can time a fault by the stream, however slowly it started).
Exit 1 on a wrong block.

    python -m tests.integration.blocks write 40 6 | sctpbond connect ...
    sctpbond listen | python -m tests.integration.blocks read report.json
"""

from __future__ import annotations

import json
import struct
import sys
import time

BLOCK = 64 * 1024
HEADER = struct.Struct("!QQ")  # sequence number, send time in ns


def block(seq: int, t_ns: int) -> bytes:
    body = seq.to_bytes(8, "big") * ((BLOCK - HEADER.size) // 8)
    return HEADER.pack(seq, t_ns) + body


def write(rate_mbit: float, seconds: float) -> None:
    interval = BLOCK * 8 / (rate_mbit * 1e6)
    count = int(seconds / interval)
    out = sys.stdout.buffer
    start = time.monotonic()
    for seq in range(count):
        due = start + seq * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.write(block(seq, time.monotonic_ns()))
        out.flush()


def read_exact(stream, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read(report: str) -> int:
    inp = sys.stdin.buffer
    sent_ns: list[int] = []
    late_ms: list[float] = []
    while True:
        data = read_exact(inp, BLOCK)
        now = time.monotonic_ns()
        if not data:
            break
        seq, t_ns = HEADER.unpack_from(data)
        if len(data) != BLOCK or seq != len(late_ms) or data != block(seq, t_ns):
            print(f"block {len(late_ms)} is wrong (seq {seq}, {len(data)} bytes)", file=sys.stderr)
            return 1
        if not late_ms:
            open(report + ".started", "w").close()
        sent_ns.append(t_ns)
        late_ms.append((now - t_ns) / 1e6)
    with open(report, "w") as f:
        json.dump({"blocks": len(late_ms), "sent_ns": sent_ns, "late_ms": late_ms}, f)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(float(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit(read(sys.argv[2]))

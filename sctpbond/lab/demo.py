"""`sctpbond demo`: the showcase. One plain TCP connection on one link, then sctpbond over all of them.

Builds an emulated two-host topology (network namespaces, shaped veth links), measures one TCP connection on
link 0 with iperf3, then streams SIZE bytes of random data through `sctpbond connect` (host a) to `sctpbond
listen` (host b) over every link, hashing what goes in and what comes out. Live per-link throughput comes
from the interface counters; the topology is always torn down.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..console import friendly_errors
from ..defaults import DEFAULT_PORT
from ..errors import TransferFailed, UsageError
from ..host import sctp_support
from ..units import human_bytes, mbit, parse_size
from .baselines import iperf_single
from .counters import Progress, watch
from .procs import SCTPBOND, BenchError, need, pipe_of, read_json, require_root, stats_paths
from .rig import Bench, BenchConfig, bench_session, remove_stale_namespaces

if TYPE_CHECKING:
    from .topology import Network

BLOCK = 1 << 20


class RandomSource:
    """Random bytes, fast: an AES-128-CTR keystream under a key from os.urandom (openssl, in C, ~GB/s), or
    os.urandom itself when openssl is missing. os.urandom alone runs at ~70-150 MB/s on a small VM, which would
    throttle a 1 Gbit/s demo and eat a CPU the transfer needs."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = "os.urandom"
        openssl = shutil.which("openssl")
        if openssl:
            key, iv = os.urandom(16).hex(), os.urandom(16).hex()
            self.proc = subprocess.Popen([openssl, "enc", "-aes-128-ctr", "-nosalt", "-K", key, "-iv", iv,
                                          "-in", "/dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self.kind = "AES-128-CTR keystream (openssl, key from os.urandom)"

    def readinto(self, view: memoryview) -> int:
        if self.proc is None:
            view[:] = os.urandom(len(view))
            return len(view)
        assert self.proc.stdout is not None
        n = os.readv(self.proc.stdout.fileno(), [view])
        if n == 0:
            raise BenchError("the random data generator (openssl) stopped early")
        return n

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


class Producer(threading.Thread):
    """Writes `size` random bytes into connect's stdin, hashing them on the way."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(name="producer", daemon=True)
        self.fd, self.size = fd, size
        self.sha = hashlib.sha256()
        self.sent = 0
        self.error: str | None = None
        self.source = RandomSource()

    def run(self) -> None:
        buf = bytearray(BLOCK)
        try:
            while self.sent < self.size:
                view = memoryview(buf)[: min(BLOCK, self.size - self.sent)]
                n = self.source.readinto(view)
                piece = view[:n]
                self.sha.update(piece)
                while piece:
                    k = os.write(self.fd, piece)
                    piece = piece[k:]
                self.sent += n
        except (OSError, BenchError) as exc:  # connect died: its exit code says why
            self.error = str(exc)
        finally:
            os.close(self.fd)
            self.source.close()


class Consumer(threading.Thread):
    """Reads the listener's stdout to the end, hashing it."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="consumer", daemon=True)
        self.fd = fd
        self.sha = hashlib.sha256()
        self.received = 0

    def run(self) -> None:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        try:
            while n := os.readv(self.fd, [buf]):
                self.sha.update(view[:n])
                self.received += n
        except OSError:
            pass
        finally:
            os.close(self.fd)


def run_demo(topology: str, size: int, transport: str, tcp_seconds: float) -> None:
    from .topology import load

    require_root("sctpbond demo")
    for tool, pkg in (("iperf3", "iperf3"), ("nsenter", "util-linux"), ("ss", "iproute2"), ("nft", "nftables")):
        need(tool, pkg)
    if transport == "sctp" and not sctp_support()[0]:
        raise UsageError("--transport sctp: this kernel has no SCTP (try `modprobe sctp`, or the VM)")
    topo = load(topology)
    remove_stale_namespaces()
    n = len(topo.links)
    echo = click.echo
    echo(f"topology {topo.name}: {topo.description or f'{n} links'}")
    echo("  host a (client) and host b (listener) are network namespaces joined by one shaped veth pair per link")
    cfg = BenchConfig(topology=topology, transports=[transport], baselines=["tcp"], size=None, seconds=tcp_seconds,
                      paths=None, progress_every=0.5, progress_err=False)
    with bench_session(topo, cfg, "demo") as bench:
        echo(f"\n1) one plain TCP connection on link 0 (iperf3, {tcp_seconds:g} s)")
        tcp = iperf_single(bench, 0, "tcp", 0).mbit_s
        echo(f"   one TCP connection: {tcp:.1f} Mbit/s")
        _bonded(bench.net, bench, bench.workdir, size, transport, tcp, n)


def _bonded(net: Network, bench: Bench, tmp: Path, size: int, transport: str, tcp: float, n: int) -> None:
    echo = click.echo
    lstats, cstats = tmp / "listen.json", tmp / "connect.json"
    common = ["-p", str(DEFAULT_PORT), "-t", transport]
    listener = bench.popen("b", "sctpbond listen", SCTPBOND + ["listen", *common, "-N", "--stats-json", str(lstats)],
                           stdout=subprocess.PIPE)
    consumer = Consumer(os.dup(pipe_of(listener.popen.stdout).fileno()))
    pipe_of(listener.popen.stdout).close()
    consumer.start()
    producer: Producer | None = None
    try:
        bench.wait_listening(DEFAULT_PORT, proc=listener)
        addrs = [net.addr("b", i) for i in range(n)]
        start = bench.mark()
        client = bench.popen("a", "sctpbond connect", SCTPBOND + ["connect", *common, "-o", "/dev/null",
                                                                  "--stats-json", str(cstats), *addrs],
                             stdin=subprocess.PIPE)
        producer = Producer(os.dup(pipe_of(client.popen.stdin).fileno()), size)
        pipe_of(client.popen.stdin).close()
        echo(f"\n2) {human_bytes(size)} of random data through sctpbond over {n} links "
             f"({producer.source.kind}, sha256 on both ends)")
        echo(f"   sctpbond connect {' '.join(addrs)}  (host a)  ->  sctpbond listen  (host b)")
        producer.start()
        progress = Progress("sctpbond", every=0.5, err=False,
                            suffix=lambda: f"   {100 * consumer.received / size:5.1f} % received")

        timeout = size * 8 / (sum(link.rate_mbit or 1000.0 for link in net.topo.links) * 1e6) * 5 + 60
        watch([client, listener], bench.counters, timeout=timeout, interval=0.1, what="sctpbond transfer",
              progress=progress, start=start)
    finally:
        listener.kill()
        for t in (producer, consumer):
            if t is not None:
                t.join(10)
    ls = read_json(lstats, "sctpbond transfer", client, listener)
    _report(net, ls, producer, consumer, tcp, n, size)


def _report(net: Network, ls: dict[str, Any], producer: Producer, consumer: Consumer, tcp: float, n: int,
            size: int) -> None:
    echo = click.echo
    elapsed = float(ls["elapsed_s"])
    total = mbit(consumer.received, elapsed)
    echo(f"\nresult: {human_bytes(consumer.received)} in {elapsed:.2f} s")
    for pid, p in stats_paths(ls).items():  # path i is link i: connect got the links' addresses in order
        where = f"link {pid} ({net.addr('b', pid)})" if pid < n else f"path {pid}"
        echo(f"   {where}: {mbit(p['bytes_received'], elapsed):7.1f} Mbit/s")
    ideal = n * tcp
    echo(f"   total: {total:.1f} Mbit/s = {total / ideal:.2f} x {n} x one TCP ({tcp:.1f} Mbit/s), "
         f"{total / tcp:.2f} x a single TCP connection")
    ok = consumer.received == producer.sent == size and producer.sha.digest() == consumer.sha.digest()
    if ok:
        echo(f"sha256 match: {consumer.sha.hexdigest()}")
        return
    echo(f"sha256 MISMATCH: sent {producer.sent} bytes sha256 {producer.sha.hexdigest()}, "
         f"received {consumer.received} bytes sha256 {consumer.sha.hexdigest()}")
    raise TransferFailed("what arrived differs from what was sent (sha256 mismatch)")


@click.command("demo")
@click.option("--topology", "-T", default="4x200", show_default=True, metavar="NAME|FILE",
              help="Topology to build (see `sctpbond topo show`).")
@click.option("--size", "-s", "size_text", default="1G", show_default=True, help="Random data to send.")
@click.option("--transport", "-t", type=click.Choice(["auto", "tcp", "sctp"]), default="auto", show_default=True)
@click.option("--tcp-seconds", type=click.FloatRange(1, 60), default=5.0, show_default=True,
              help="Length of the single-TCP reference measurement.")
@friendly_errors
def demo(topology: str, size_text: str, transport: str, tcp_seconds: float) -> None:
    """Show sctpbond summing the links: one TCP connection vs sctpbond over all links (needs root).

    Example: sudo sctpbond demo --topology 4x200 --size 1G
    """
    size = parse_size(size_text, "--size")
    if size < BLOCK:
        raise UsageError("--size must be at least 1M")
    t = transport if transport != "auto" else ("sctp" if sctp_support()[0] else "tcp")
    run_demo(topology, size, t, tcp_seconds)


"""Command line: netcat-like `listen` and `connect`, plus `topo`, `doctor`, `demo` and `bench`.

Exit codes: 0 success, 1 the transfer failed, 2 bad usage. Every expected failure is one line on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import SctpbondError, UsageError
from .proto.scheduler import SchedulerConfig
from .proto.session import SessionConfig
from .runtime.options import Options
from .runtime.runner import RunnerConfig
from .transport import TRANSPORTS
from .units import parse_size

DEFAULT_PORT = 7300
LOG = logging.getLogger("sctpbond")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"sctpbond: {record.getMessage()}"


def _setup_logging(verbose: int, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    LOG.handlers[:] = [handler]
    LOG.propagate = False
    LOG.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)


def _fail(message: str, code: int) -> None:
    click.echo(f"sctpbond: error: {message}", err=True)
    sys.exit(code)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map our errors to one line + exit code; no traceback unless SCTPBOND_DEBUG is set."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SctpbondError as exc:
            if os.environ.get("SCTPBOND_DEBUG"):
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            _fail("output closed (broken pipe)", 1)
        except Exception as exc:  # a bug: still one line, with a hint to get the details
            if os.environ.get("SCTPBOND_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set SCTPBOND_DEBUG=1 for a traceback)", 1)

    return wrapper


def _read_key(key_file: str | None) -> bytes | None:
    if key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read key file {key_file}: {exc.strerror}") from None
        if not key:
            raise UsageError(f"key file {key_file} is empty")
        return key
    env = os.environ.get("SCTPBOND_KEY")
    return env.encode() if env else None


def session_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options both ends share."""
    decorators = [
        click.option("--transport", "-t", type=click.Choice(TRANSPORTS), default="auto", show_default=True,
                     help="auto: kernel SCTP where available, otherwise TCP (one connection per path)."),
        click.option("--key-file", type=click.Path(dir_okay=False),
                     help="Pre-shared key: both ends must use the same one (or set SCTPBOND_KEY). Authenticates "
                          "both ends with HMAC-SHA256; without a key, paths join with a random session token.",
                     envvar=None),
        click.option("--stats-json", type=click.Path(dir_okay=False),
                     help="Write per-path and total bytes, chunks, resends and throughput here at the end."),
        click.option("--window", default="64M", show_default=True,
                     help="Cap on the receive reorder buffer and on unacknowledged send data (memory bound)."),
        click.option("--chunk", default="256K", show_default=True, help="Largest chunk sent on a path."),
        click.option("--path-timeout", type=float, default=30.0, show_default=True,
                     help="With every path down, wait this many seconds for one to come back before failing."),
        click.option("--dead-after", type=float, default=1.5, show_default=True,
                     help="A path that stays silent this long (no answer to heartbeats) is declared dead."),
        click.option("-N", "--no-stdin", is_flag=True,
                     help="Send nothing (do not read stdin). Stdin that is a terminal is never read."),
        click.option("-v", "--verbose", count=True, help="Say which paths open, join and fail."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
    ]
    for deco in reversed(decorators):
        f = deco(f)
    return f


def _options(window: str, chunk: str, path_timeout: float, dead_after: float, key_file: str | None) -> Options:
    win = parse_size(window, "--window")
    ch = parse_size(chunk, "--chunk")
    if not 64 * 1024 <= ch <= 1 << 20:
        raise UsageError("--chunk must be between 64K and 1M")
    if win < 4 * ch:
        raise UsageError("--window must be at least 4 chunks")
    if path_timeout <= 0 or dead_after <= 0:
        raise UsageError("--path-timeout and --dead-after must be positive")
    session = SessionConfig(window=win, send_cap=win, max_chunk=ch, dead_after=dead_after,
                            scheduler=SchedulerConfig(max_chunk=ch, max_quota=max(ch, win // 2)))
    return Options(key=_read_key(key_file), session=session, runner=RunnerConfig(path_timeout=path_timeout))


def _stdin_fd(no_stdin: bool, input_file: str | None) -> tuple[int | None, Callable[[], None]]:
    if input_file and input_file != "-":
        try:
            fd = os.open(input_file, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"cannot open input {input_file}: {exc.strerror}") from None
        return fd, lambda: os.close(fd)
    if no_stdin or os.isatty(0):
        return None, lambda: None
    _grow_pipe(0)
    return 0, lambda: None


def _stdout_fd(output: str | None) -> tuple[int, Callable[[], None]]:
    if output and output != "-":
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot open output {output}: {exc.strerror}") from None
        return fd, lambda: os.close(fd)
    return 1, lambda: None


def _grow_pipe(fd: int) -> None:
    """A 64 KiB pipe makes many small reads; ask for 1 MiB (best effort, Linux only)."""
    import fcntl
    import stat

    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass


def _write_stats(path: str | None, stats: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(stats, indent=2) + "\n")


def _summary(stats: dict) -> None:
    LOG.info(
        f"done: sent {stats['bytes_sent']} B, received {stats['bytes_received']} B in {stats['elapsed_s']} s; "
        + ", ".join(f"path {p['id']} {p['label']}: tx {p['send_mbit_s']} rx {p['recv_mbit_s']} Mbit/s"
                    for p in stats["paths"])
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="sctpbond")
def main() -> None:
    """sctpbond: one transfer over several network links at once.

    Run `sctpbond listen > out` on one host and `sctpbond connect ADDR1 ADDR2 ... < in` on the other. Each ADDR
    is one path (for example one NIC's address on the listener); the byte stream is striped over all paths,
    reassembled in order, and resent elsewhere if a path dies. Both directions stream at once (like netcat).
    """


@main.command()
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--bind", "-b", "binds", multiple=True, metavar="ADDR",
              help="Address to listen on (repeatable). Default: all addresses.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the received stream here "
              "instead of stdout.")
@session_options
@friendly_errors
def listen(port: int, binds: tuple[str, ...], output: str | None, transport: str, key_file: str | None,
           stats_json: str | None, window: str, chunk: str, path_timeout: float, dead_after: float,
           no_stdin: bool, verbose: int, quiet: bool) -> None:
    """Wait for one session; write what it receives to stdout and send stdin back."""
    from . import transport as transports
    from .runtime.server import Server

    _setup_logging(verbose, quiet)
    opts = _options(window, chunk, path_timeout, dead_after, key_file)
    names = transports.resolve(transport)
    listeners = transports.make_listeners(names, binds or ["0.0.0.0"], port)
    LOG.info(f"listening on port {port} ({', '.join(names)})")
    src, close_src = _stdin_fd(no_stdin, None)
    out, close_out = _stdout_fd(output)
    try:
        stats = Server(listeners, options=opts, source_fd=src, sink_fd=out).run()
    finally:
        close_src()
        close_out()
    _write_stats(stats_json, stats)
    _summary(stats)


@main.command()
@click.argument("addrs", nargs=-1, metavar="ADDR[:PORT]...")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port for ADDRs given without one.")
@click.option("--path", "pinned", multiple=True, metavar="LOCAL=REMOTE[:PORT]",
              help="A path pinned to a local address (repeatable), e.g. --path 10.0.1.1=10.0.1.2.")
@click.option("--multiplier", "-m", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Connections per path (spreads one path over a LAG whose hash pins each connection).")
@click.option("-i", "--input", "input_file", type=click.Path(dir_okay=False),
              help="Send this file instead of stdin.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write what the listener sends back "
              "here instead of stdout.")
@session_options
@friendly_errors
def connect(addrs: tuple[str, ...], port: int, pinned: tuple[str, ...], multiplier: int, input_file: str | None,
            output: str | None, transport: str, key_file: str | None, stats_json: str | None, window: str,
            chunk: str, path_timeout: float, dead_after: float, no_stdin: bool, verbose: int, quiet: bool) -> None:
    """Open a session over every given path; send stdin, write what comes back to stdout."""
    from .runtime.client import Client, parse_path

    _setup_logging(verbose, quiet)
    paths = [parse_path(a, port) for a in addrs]
    for p in pinned:
        if "=" not in p:
            raise UsageError(f"bad --path {p!r}: expected LOCAL=REMOTE[:PORT]")
        paths.append(parse_path(p, port))
    if not paths:
        raise UsageError("no path given: name at least one ADDR (or --path LOCAL=REMOTE)")
    opts = _options(window, chunk, path_timeout, dead_after, key_file)
    src, close_src = _stdin_fd(no_stdin, input_file)
    out, close_out = _stdout_fd(output)
    try:
        client = Client(paths, transport=transport, multiplier=multiplier, options=opts, source_fd=src, sink_fd=out)
        stats = client.run()
    finally:
        close_src()
        close_out()
    _write_stats(stats_json, stats)
    _summary(stats)


@main.group()
def topo() -> None:
    """Build, show and remove emulated multi-NIC hosts (network namespaces joined by shaped veth links)."""


@topo.command("up")
@click.argument("topology")
@click.option("--prefix", default="sb", show_default=True, help="Namespace name prefix.")
@friendly_errors
def topo_up(topology: str, prefix: str) -> None:
    """Build TOPOLOGY (a file or a name from netns/)."""
    from .topology import Network, load

    net = Network(load(topology), prefix=prefix).up()
    click.echo(net.describe())


@topo.command("down")
@click.option("--prefix", default="sb", show_default=True)
@friendly_errors
def topo_down(prefix: str) -> None:
    """Remove the namespaces built by `topo up` (with this prefix)."""
    from .topology import cleanup_stale

    removed = cleanup_stale(prefix)
    click.echo(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else ""))


@topo.command("show")
@click.argument("topology", required=False)
@friendly_errors
def topo_show(topology: str | None) -> None:
    """Describe TOPOLOGY, or list the shipped ones."""
    from .topology import builtin_names, load

    if topology is None:
        for name in builtin_names():
            click.echo(f"{name:18} {load(name).description}")
        return
    topo_ = load(topology)
    click.echo(f"{topo_.name}: {topo_.description}")
    for i, link in enumerate(topo_.links):
        rate = "unshaped" if link.rate_mbit is None else f"{link.rate_mbit:g} Mbit/s"
        click.echo(f"  link {i}: {rate}, loss {link.loss_pct:g} %, delay {link.delay_ms:g} ms")


from .bench import bench as _bench_cmd  # noqa: E402
from .demo import demo as _demo_cmd  # noqa: E402
from .doctor import doctor as _doctor_cmd  # noqa: E402
from .bench_failover import bench_failover as _bench_failover_cmd  # noqa: E402

main.add_command(_bench_cmd)
main.add_command(_demo_cmd)
main.add_command(_doctor_cmd)
main.add_command(_bench_failover_cmd)

if __name__ == "__main__":
    main()

"""Command line: netcat-like `listen` and `connect`, plus `topo`, `doctor`, `demo` and `bench`.

Exit codes: 0 success, 1 the transfer failed, 2 bad usage. Every expected failure is one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import wraps
from pathlib import Path
from typing import Any

import click

from . import __version__
from .console import LOG, friendly_errors, setup_logging
from .defaults import DEFAULT_PORT
from .doctor import doctor
from .errors import UsageError
from .lab.bench import bench
from .lab.bench_failover import bench_failover
from .lab.demo import demo
from .runtime.endpoints import grow_pipe
from .runtime.options import Options, make_options
from .transport import TRANSPORTS
from .units import parse_rate, parse_size


def _read_key(key_file: str | None) -> bytes | None:
    from .runtime.options import check_key

    if key_file:
        try:
            mode = os.stat(key_file).st_mode
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read key file {key_file}: {exc.strerror}") from None
        if mode & 0o077:  # as ssh refuses a private key others can read
            raise UsageError(f"key file {key_file} is readable by group or others: chmod 600 {key_file}")
        if not key:
            raise UsageError(f"key file {key_file} is empty")
        check_key(key, f"key file {key_file}")
        return key
    env = os.environ.get("SCTPBOND_KEY")
    if env:
        check_key(env.encode(), "SCTPBOND_KEY")
    return env.encode() if env else None


@dataclass(frozen=True)
class Shared:
    """The options both ends share, collected by @session_options into one `shared` argument."""

    transport: str
    key_file: str | None
    no_encrypt: bool
    stats_json: str | None
    window: str
    chunk: str
    path_timeout: float
    dead_after: float
    limit_rate: str | None
    progress: bool | None
    no_stdin: bool
    verbose: int
    quiet: bool


def session_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options both ends share; the command receives them as one `shared: Shared` keyword argument."""
    decorators = [
        click.option("--transport", "-t", type=click.Choice(TRANSPORTS), default="auto", show_default=True,
                     help="auto: kernel SCTP where available, otherwise TCP (one connection per path)."),
        click.option("--key-file", type=click.Path(dir_okay=False),
                     help="Pre-shared key, at least 16 bytes, mode 600 (make one with `sctpbond keygen FILE`): "
                          "both ends must use the same one (or set SCTPBOND_KEY). "
                          "Authenticates both ends with HMAC-SHA256 over the whole handshake and encrypts every "
                          "frame with AES-256-GCM; "
                          "without a key, paths join with a random 128-bit session token (a stranger cannot join your "
                          "session, but anyone who reaches the listener can start one) and nothing is encrypted.",
                     envvar=None),
        click.option("--no-encrypt", is_flag=True,
                     help="With a key: send the stream in clear, every frame still authenticated (GMAC; trusted "
                          "links, saves CPU). "
                          "A listener without it refuses clients that do not encrypt."),
        click.option("--stats-json", type=click.Path(dir_okay=False),
                     help="Write per-path and total bytes, chunks, resends and throughput here at the end."),
        click.option("--window", default="64M", show_default=True,
                     help="Cap on the receive reorder buffer and on unacknowledged send data (memory bound)."),
        click.option("--chunk", default="1M", show_default=True,
                     help="Largest chunk (frame payload): each path sends chunks of about 20 ms of its rate, "
                          "from 256K up to this."),
        click.option("--path-timeout", type=float, default=30.0, show_default=True,
                     help="With every path down, wait this many seconds for one to come back before failing."),
        click.option("--dead-after", type=float, default=1.0, show_default=True,
                     help="A path that stays silent this long (no answer to heartbeats) is declared dead; after "
                          "0.4 s of silence its unacknowledged data is already sent again on the other paths."),
        click.option("--limit-rate", metavar="RATE",
                     help="Cap what this side sends, over all paths together, in bytes per second "
                          "(e.g. 500M, or 100Mbit)."),
        click.option("--progress/--no-progress", default=None,
                     help="Progress on stderr (bytes, rate, ETA, per-path rates). Default: when stderr is a "
                          "terminal."),
        click.option("-N", "--no-stdin", is_flag=True,
                     help="Send nothing (do not read stdin). Stdin that is a terminal is never read."),
        click.option("-v", "--verbose", count=True, help="Say which paths open, join and fail."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
    ]
    names = [field.name for field in fields(Shared)]

    @wraps(f)
    def collect(*args: Any, **kwargs: Any) -> Any:
        from .runtime.memory import tune_allocator

        tune_allocator()  # a data-moving command: fewer page faults per frame (runtime/memory.py)
        shared = Shared(**{name: kwargs.pop(name) for name in names})
        return f(*args, shared=shared, **kwargs)

    for deco in reversed(decorators):
        collect = deco(collect)
    return collect


def _options(shared: Shared, redundant: bool = False) -> Options:
    rate = parse_rate(shared.limit_rate, "--limit-rate") if shared.limit_rate else None
    return make_options(window=parse_size(shared.window, "--window"), chunk=parse_size(shared.chunk, "--chunk"),
                        dead_after=shared.dead_after, path_timeout=shared.path_timeout, limit_rate=rate,
                        key=_read_key(shared.key_file), encrypt=not shared.no_encrypt, redundant=redundant)


def _with_progress(opts: Options, shared: Shared, source_fd: int | None) -> Options:
    """Progress on stderr when asked, or by default when stderr is a terminal; an ETA when the input is a file."""
    show = shared.progress if shared.progress is not None else (sys.stderr.isatty() and not shared.quiet)
    size = None
    if source_fd is not None:
        import stat

        st = os.fstat(source_fd)
        if stat.S_ISREG(st.st_mode):
            size = max(0, st.st_size - os.lseek(source_fd, 0, os.SEEK_CUR))
    runner = replace(opts.runner, progress=bool(show), expected_size=size)
    return replace(opts, runner=runner)


def _nothing_to_close() -> None:
    pass


def _stdin_fd(no_stdin: bool, input_file: str | None) -> tuple[int | None, Callable[[], None]]:
    if input_file and input_file != "-":
        try:
            fd = os.open(input_file, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"cannot open input {input_file}: {exc.strerror}") from None
        return fd, lambda: os.close(fd)
    if no_stdin or os.isatty(0):
        return None, _nothing_to_close
    grow_pipe(0)
    return 0, _nothing_to_close


def _finish_on_hangup(grace: float = 5.0) -> None:
    """As ssh ProxyCommand: ssh closes our stdin and stdout and sends SIGHUP at once when it is done. Dying there
    would cut the session short (the listener would log it as failed); instead let it close in order, for at most
    `grace` seconds, then stop as Ctrl-C does. A second SIGHUP ends the process at once."""
    import _thread
    import signal
    import threading

    def on_hangup(signum: int, frame: object) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        timer = threading.Timer(grace, _thread.interrupt_main)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGHUP, on_hangup)


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
              "instead of stdout; created only once a peer has authenticated. With --keep-open a per-session "
              "name: {n} is the session number, {peer} its address, {time} its start (e.g. -o 'recv-{n}.img'); "
              "nothing is then sent back.")
@click.option("-k", "--keep-open", is_flag=True,
              help="Serve many sessions, several at once, each on its own paths and buffers; one failing (or a "
                   "wrong key) is logged and the listener goes on. Each session needs its own stream: --relay, "
                   "--exec, or -o with {n} in the name. Without it: one session, then exit (a wrong key or a "
                   "malformed handshake is logged and the listener keeps waiting).")
@click.option("--relay", metavar="HOST:PORT",
              help="Forward each session to this TCP service (e.g. 127.0.0.1:22 for sshd, with `sctpbond connect` "
                   "as ssh ProxyCommand): connected once the peer has authenticated, both directions, half-close "
                   "passed on.")
@click.option("--exec", "exec_cmd", metavar="CMD",
              help="Run CMD (with /bin/sh) per session, the received stream on its stdin, its stdout sent back; "
                   "SCTPBOND_SESSION and SCTPBOND_PEER are set. A non-zero exit status is logged.")
@click.option("--max-sessions", type=click.IntRange(1, 1024), default=None, metavar="N",
              help="With --keep-open: at most N sessions at once; more are refused as busy.  [default: 16]")
@session_options
@friendly_errors
def listen(port: int, binds: tuple[str, ...], output: str | None, keep_open: bool, relay: str | None,
           exec_cmd: str | None, max_sessions: int | None, shared: Shared) -> None:
    """Wait for one session; write what it receives to stdout and send stdin back.

    With --keep-open, serve sessions until interrupted, each into --relay HOST:PORT, --exec CMD or its own -o file.
    """
    from . import transport as transports
    from .routes import is_loopback, preload
    from .runtime import endpoints
    from .runtime.server import Served, Server

    setup_logging(shared.verbose, shared.quiet)
    opts = _options(shared)
    if relay is not None and exec_cmd is not None:
        raise UsageError("--relay and --exec exclude each other: each session goes to one place")
    if (relay is not None or exec_cmd is not None) and output:
        raise UsageError("-o does not apply with --relay or --exec: the stream goes to the service or command")
    if max_sessions is not None and not keep_open:
        raise UsageError("--max-sessions applies only with --keep-open (without it the listener serves one session)")
    if keep_open and relay is None and exec_cmd is None and not output:
        raise UsageError("--keep-open serves several sessions at once, so each needs its own stream: add --relay "
                         "HOST:PORT, --exec CMD, or -o with {n} in the file name (e.g. -o 'recv-{n}.img')")
    src: int | None = None
    close_src: Callable[[], None] = _nothing_to_close
    if relay is not None:
        from .runtime.client import split_host_port

        if not relay.rstrip("]").rpartition(":")[2].isdigit():
            raise UsageError(f"--relay {relay!r}: expected HOST:PORT, e.g. 127.0.0.1:22")
        factory = endpoints.relay(*split_host_port(relay, 0))
    elif exec_cmd is not None:
        if not exec_cmd.strip():
            raise UsageError("--exec needs a command")
        factory = endpoints.exec_command(exec_cmd)
    elif keep_open:
        assert output
        factory = endpoints.output_pattern(output)
    else:
        src, close_src = _stdin_fd(shared.no_stdin, None)
        factory = endpoints.output_file(output, src) if output and output != "-" else endpoints.stdio(src, 1)
    # concurrent sessions would draw over each other's progress lines
    opts = _with_progress(opts, replace(shared, progress=False) if keep_open else shared, src)
    names = transports.resolve(shared.transport)
    listeners = transports.make_listeners(names, binds or ["0.0.0.0"], port)
    if not binds and "tcp" in names:
        # The first WELCOME advertises our addresses, which a wildcard TCP socket cannot list: import pyroute2
        # while nobody waits (an SCTP socket lists them itself; pyroute2 would only cost CPU during the transfer).
        preload()
    if opts.key is None and not all(is_loopback(b) or b == "localhost" for b in binds or ["0.0.0.0"]):
        LOG.warning(f"notice: no key, so anyone who can reach port {port} on {', '.join(binds) or 'any address'} "
                    "can start a session and nothing is encrypted (set --key-file or SCTPBOND_KEY)")
    # last of the start-up lines: whoever waits for it (a script, the tests) has seen all of them
    LOG.info(f"listening on port {port} ({', '.join(names)})" + (" for many sessions" if keep_open else ""))

    def session_end(served: Served) -> None:
        if not keep_open:
            return
        who = f"session {served.number} from {served.peer[0]}"
        if served.error is not None:
            LOG.warning(f"{who} failed: {served.error}")
            return
        assert served.stats is not None
        if shared.stats_json:
            _write_stats(_per_session(shared.stats_json, served), served.stats)
        st = served.stats
        LOG.info(f"{who} done: received {st['bytes_received']} B, sent {st['bytes_sent']} B in {st['elapsed_s']} s")

    server = Server(listeners, options=opts, endpoints=factory, keep_open=keep_open,
                    max_sessions=max_sessions or 16, on_session_end=session_end)
    try:
        stats = server.run()
    finally:
        close_src()
    if not keep_open:
        _write_stats(shared.stats_json, stats)
        _summary(stats)


def _per_session(pattern: str, served: Any) -> str:
    """--stats-json with --keep-open: {n}, {peer}, {time} name a file per session (else the last one wins)."""
    from .runtime.endpoints import SessionInfo, expand

    try:
        return expand(pattern, SessionInfo(served.number, served.peer))
    except (KeyError, IndexError, ValueError):
        return pattern


@main.command()
@click.argument("addrs", nargs=-1, metavar="ADDR[:PORT]...")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port for ADDRs given without one.")
@click.option("--path", "pinned", multiple=True, metavar="LOCAL=REMOTE[:PORT]",
              help="A path pinned to a local address (repeatable), e.g. --path 10.0.1.1=10.0.1.2.")
@click.option("--backup", "backups", multiple=True, metavar="ADDR[:PORT]",
              help="A backup path (repeatable): it carries only heartbeats while any other path works, and the "
                   "stream when none does (a metered LTE uplink, a slow spare link).")
@click.option("--backup-path", "backup_paths", multiple=True, metavar="LOCAL=REMOTE[:PORT]",
              help="A backup path pinned to a local address (repeatable).")
@click.option("--redundant", is_flag=True,
              help="Send every chunk on two paths, both directions: a link that dies stalls nothing (live "
                   "streams), for twice the traffic. Needs two paths or more.")
@click.option("--multiplier", "-m", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Connections per path (spreads one path over a LAG whose hash pins each connection).")
@click.option("--no-auto", is_flag=True,
              help="Use only the paths given here. By default every address the listener advertises is dialled "
                   "too, from the local address that routes to it (-v says which and why).")
@click.option("-i", "--input", "input_file", type=click.Path(dir_okay=False),
              help="Send this file instead of stdin.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write what the listener sends back "
              "here instead of stdout.")
@session_options
@friendly_errors
def connect(addrs: tuple[str, ...], port: int, pinned: tuple[str, ...], backups: tuple[str, ...],
            backup_paths: tuple[str, ...], redundant: bool, multiplier: int, no_auto: bool,
            input_file: str | None, output: str | None, shared: Shared) -> None:
    """Open a session over every given path, and over every further address the listener advertises; send
    stdin, write what comes back to stdout. A hostname stands for all its addresses."""
    from .runtime.client import Client, parse_path
    from .runtime.endpoints import FileEndpoint, StdioEndpoint

    setup_logging(shared.verbose, shared.quiet)
    _finish_on_hangup()
    paths = [parse_path(a, port) for a in addrs]
    for option, given, backup in (("--path", pinned, False), ("--backup-path", backup_paths, True)):
        for p in given:
            if "=" not in p:
                raise UsageError(f"bad {option} {p!r}: expected LOCAL=REMOTE[:PORT]")
            paths.append(parse_path(p, port, backup))
    paths += [parse_path(a, port, backup=True) for a in backups]
    if not paths:
        raise UsageError("no path given: name at least one ADDR (or --path LOCAL=REMOTE)")
    if all(p.backup for p in paths):
        raise UsageError("only backup paths given: name at least one regular ADDR")
    opts = _options(shared, redundant)
    src, close_src = _stdin_fd(shared.no_stdin, input_file)
    opts = _with_progress(opts, shared, src)
    endpoint = FileEndpoint(output, src) if output and output != "-" else StdioEndpoint(src, 1)
    try:
        client = Client(paths, transport=shared.transport, multiplier=multiplier, options=opts, endpoint=endpoint,
                        auto=not no_auto)
        stats = client.run()
    finally:
        close_src()
        endpoint.close(True)
    _write_stats(shared.stats_json, stats)
    _summary(stats)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@friendly_errors
def keygen(file: str) -> None:
    """Write a new pre-shared key to FILE for --key-file: 32 random bytes as one line of base64, mode 600. An
    existing FILE is never overwritten. Copy it to the other end over a channel you trust (scp, a config tool)."""
    import base64
    import secrets

    line = base64.b64encode(secrets.token_bytes(32)) + b"\n"
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # mode 600 from the start: never readable
    except FileExistsError:
        raise UsageError(f"{file} exists; not overwriting a key (remove it first to make a new one)") from None
    except OSError as exc:
        raise UsageError(f"cannot create {file}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, line)
    finally:
        os.close(fd)
    click.echo(f"wrote a 32-byte key to {file} (mode 600); give both ends the same file with --key-file", err=True)


@main.group()
def topo() -> None:
    """Build, show and remove emulated multi-NIC hosts (network namespaces joined by shaped veth links)."""


@topo.command("up")
@click.argument("topology")
@click.option("--prefix", default="sb", show_default=True, help="Namespace name prefix.")
@friendly_errors
def topo_up(topology: str, prefix: str) -> None:
    """Build TOPOLOGY (a file or a name from netns/)."""
    from .lab.topology import Network, load

    net = Network(load(topology), prefix=prefix).up()
    click.echo(net.describe())


@topo.command("down")
@click.option("--prefix", default="sb", show_default=True)
@friendly_errors
def topo_down(prefix: str) -> None:
    """Remove the namespaces built by `topo up` (with this prefix)."""
    from .lab.topology import cleanup_stale

    removed = cleanup_stale(prefix)
    click.echo(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else ""))


@topo.command("show")
@click.argument("topology", required=False)
@friendly_errors
def topo_show(topology: str | None) -> None:
    """Describe TOPOLOGY, or list the shipped ones."""
    from .lab.topology import builtin_names, load

    if topology is None:
        for name in builtin_names():
            click.echo(f"{name:18} {load(name).description}")
        return
    topo_ = load(topology)
    click.echo(f"{topo_.name}: {topo_.description}")
    for i, link in enumerate(topo_.links):
        rate = "unshaped" if link.rate_mbit is None else f"{link.rate_mbit:g} Mbit/s"
        click.echo(f"  link {i}: {rate}, loss {link.loss_pct:g} %, delay {link.delay_ms:g} ms")


for command in (bench, demo, doctor, bench_failover):  # the lab's commands, and doctor
    main.add_command(command)

if __name__ == "__main__":
    main()

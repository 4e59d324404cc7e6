"""One recipe per kind of run (bench.py's docstring says what each measures and why): each starts its processes
on a Bench, watches them, checks what their receiver reports and returns a RunResult. bench.plan names them:
``iperf_single`` (TCP or SCTP on one link), ``iperf_parallel``, ``mptcp``, ``tcp_pipe``, ``sctpbond`` and
``sctpbond_aes``. The demo and bench-failover take their one-TCP reference from ``iperf_single``.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from ..defaults import DEFAULT_PORT
from ..host import IPPROTO_MPTCP
from .helper import MPTCP_PORT
from .procs import HELPER, SCTPBOND, BenchError, Proc, read_json, stats_paths
from .report import RunResult
from .rig import Bench

IPERF_PORT = 5201


def _iperf_server(bench: Bench, link: int, name: str) -> Proc:
    return bench.popen("b", name, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT + link), "-B", bench.net.addr("b", link)])


def _iperf_client(bench: Bench, link: int, proto: str, name: str, out: Path) -> Proc:
    """An iperf3 client on `link`, its -J report into `out`: SIZE / links bytes, or for --seconds."""
    cfg = bench.cfg
    amount = ["-n", str(max(1, cfg.size // len(bench.links)))] if cfg.size is not None else ["-t", f"{cfg.seconds}"]
    extra = ["--sctp"] if proto == "sctp" else []
    with open(out, "wb") as fout:
        return bench.popen("a", name, ["iperf3", "-c", bench.net.addr("b", link), "-p", str(IPERF_PORT + link),
                                       "-J", *amount, *extra], stdout=fout)


def iperf_single(bench: Bench, link: int, proto: str, rep: int) -> RunResult:
    """One iperf3 flow on one link alone (TCP, or SCTP with proto='sctp')."""
    res = RunResult(f"{proto}-link{link}", proto, rep, links=[link])
    cfg = bench.cfg
    server = _iperf_server(bench, link, "iperf3 server")
    try:
        bench.wait_listening(IPERF_PORT + link, proc=server)  # iperf3's control connection is TCP, even for --sctp
        out = bench.tmp("iperf3.json")
        start = bench.mark()
        client = _iperf_client(bench, link, proto, "iperf3 client", out)
        nbytes = cfg.size // len(bench.links) if cfg.size is not None else None
        series, link_bytes = bench.watch([client, server], res.name, [link], start, nbytes)
    finally:
        server.kill()
    data = read_json(out, res.name, client)
    end = data.get("end", {})
    recv = end.get("sum_received") or end.get("sum") or {}
    sent = end.get("sum_sent") or {}
    res.detail = {"retransmits": sent.get("retransmits"), "iperf3_sender_mbit_s": round(
        sent.get("bits_per_second", 0) / 1e6, 2), "cc": end.get("sender_tcp_congestion")}
    res.wall_s = client.wall_s
    res.finish(int(recv.get("bytes", 0)), float(recv.get("seconds", 0)), link_bytes, series,
               {"sender": client, "receiver": server})
    return res


def iperf_parallel(bench: Bench, proto: str, rep: int) -> RunResult:
    """One iperf3 flow per link, all at once (TCP, or SCTP with proto='sctp')."""
    res = RunResult(f"{proto}-parallel", f"{proto}-parallel", rep, links=list(bench.links))
    cfg = bench.cfg
    servers, clients, outs = [], [], []
    try:
        for i in bench.links:
            servers.append(_iperf_server(bench, i, f"iperf3 server {i}"))
        for i, s in zip(bench.links, servers, strict=True):
            bench.wait_listening(IPERF_PORT + i, proc=s)
        start = bench.mark()
        for i in bench.links:
            outs.append(bench.tmp(f"iperf3-{i}.json"))
            clients.append(_iperf_client(bench, i, proto, f"iperf3 client {i}", outs[-1]))
        series, link_bytes = bench.watch(clients + servers, res.name, bench.links, start, cfg.size)
    finally:
        for s in servers:
            s.kill()
    total_bytes, per_flow = 0, []
    seconds = 0.0
    for i, (c, out) in enumerate(zip(clients, outs, strict=True)):
        data = read_json(out, f"{res.name}: link {i}", c)
        recv = data.get("end", {}).get("sum_received", {})
        total_bytes += int(recv.get("bytes", 0))
        seconds = max(seconds, float(recv.get("seconds", 0)))
        per_flow.append(round(recv.get("bits_per_second", 0) / 1e6, 2))
    res.detail = {"per_flow_mbit_s": per_flow}
    procs = {f"sender{i}": c for i, c in enumerate(clients)} | {f"receiver{i}": s for i, s in enumerate(servers)}
    res.finish(total_bytes, seconds, link_bytes, series, procs)
    # Sum of per-flow rates: each flow is timed by its own receiver (with -n they end at different times).
    res.mbit_s = round(sum(per_flow), 2)
    for i, rate in zip(bench.links, per_flow, strict=True):
        res.link_mbit_s[i] = rate
    return res


def _mptcp_setup(bench: Bench) -> None:
    net = bench.net
    cmds = [("a", ["ip", "mptcp", "endpoint", "flush"]), ("b", ["ip", "mptcp", "endpoint", "flush"])]
    # As the kernel's mptcp selftests do: raise the limits on both ends, and give the client one
    # "subflow" endpoint per extra link (bound to its device), so the in-kernel path manager opens one
    # subflow per link to the server's address.
    for host in ("a", "b"):
        cmds.append((host, ["ip", "mptcp", "limits", "set", "subflow", "8", "add_addr_accepted", "8"]))
    for i in bench.links[1:]:
        cmds.append(("a", ["ip", "mptcp", "endpoint", "add", net.addr("a", i), "dev", net.ifname("a", i),
                           "subflow"]))
    for host, argv in cmds:
        try:
            r = net.run(host, argv, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"mptcp setup: `{' '.join(argv)}` did not finish in 30 s") from None
        if r.returncode != 0:
            raise BenchError(f"mptcp setup failed: {' '.join(argv)}: {r.stderr.strip() or r.returncode}")


def mptcp(bench: Bench, rep: int) -> RunResult:
    """Kernel MPTCP, one subflow per link, fed from the same kind of pipe as sctpbond."""
    _mptcp_setup(bench)
    res = _pipe_stream(bench, RunResult("mptcp", "mptcp", rep, links=list(bench.links)), IPPROTO_MPTCP)
    _check_all_links(res)
    return res


def tcp_pipe(bench: Bench, rep: int) -> RunResult:
    """One plain TCP connection on link 0 fed from the same pipe, by the same tiny Python sender as MPTCP:
    the reference for sctpbond's own overhead (iperf3 sends from memory and never reads a pipe)."""
    return _pipe_stream(bench, RunResult("tcp-pipe", "tcp-pipe", rep, links=[bench.links[0]]), socket.IPPROTO_TCP)


def _pipe_stream(bench: Bench, res: RunResult, proto: int) -> RunResult:
    what = "mptcp" if proto == IPPROTO_MPTCP else "tcp"
    out = bench.tmp(f"{what}-recv.json")
    with open(out, "wb") as fout:
        recv = bench.popen("b", f"{what} receiver", HELPER + ["stream-recv", "--port", str(MPTCP_PORT),
                                                              "--proto", str(proto)], stdout=fout)
    feeder = None
    try:
        bench.wait_listening(MPTCP_PORT, proc=recv)
        start = bench.mark()
        feeder, send = bench.fed(f"{what} sender", HELPER + ["stream-send", bench.net.addr("b", res.links[0]),
                                                             "--port", str(MPTCP_PORT), "--proto", str(proto)])
        series, link_bytes = bench.watch([send, recv], res.name, res.links, start)
    finally:
        recv.kill()
        if feeder is not None:
            feeder.kill()
    data = read_json(out, res.name, send, recv)
    if bench.cfg.size is not None and data["bytes"] != bench.cfg.size:
        raise BenchError(f"{res.name}: received {data['bytes']} bytes of {bench.cfg.size}")
    res.wall_s = send.wall_s
    if proto == IPPROTO_MPTCP:
        res.detail = {"subflows_seen": data.get("subflows")}
    res.finish(data["bytes"], data["seconds"], link_bytes, series, {"sender": send, "receiver": recv})
    return res


def _check_all_links(res: RunResult) -> None:
    idle = [i for i in res.links if res.link_bytes[i] < max(1 << 20, res.bytes // (100 * len(res.links)))]
    if idle:
        res.notes.append(f"link(s) {', '.join(map(str, idle))} carried (almost) nothing")


def sctpbond_aes(bench: Bench, transport: str, rep: int) -> RunResult:
    """sctpbond with a pre-shared key: authenticated and every frame sealed with AES-256-GCM."""
    return sctpbond(bench, transport, rep, keyed=True)


def sctpbond(bench: Bench, transport: str, rep: int, keyed: bool = False) -> RunResult:
    name = f"sctpbond-{transport}" + ("-aes" if keyed else "")
    res = RunResult(name, "sctpbond", rep, transport=transport, links=list(bench.links))
    net, cfg = bench.net, bench.cfg
    lstats, cstats = bench.tmp("listen.json"), bench.tmp("connect.json")
    common = ["-p", str(DEFAULT_PORT), "-t", transport, *cfg.bond_opts]
    if keyed:
        keyfile = bench.tmp("key")
        keyfile.write_text(os.urandom(32).hex())
        keyfile.chmod(0o600)  # sctpbond refuses a key file others can read
        common += ["--key-file", str(keyfile)]
    listener = bench.popen("b", "sctpbond listen", SCTPBOND + ["listen", *common, "-o", "/dev/null", "-N",
                                                               "--stats-json", str(lstats)])
    feeder = None
    spies: list[Proc] = []
    try:
        bench.wait_listening(DEFAULT_PORT, proc=listener)
        start = bench.mark()
        addrs = [net.addr("b", i) for i in bench.links]
        feeder, client = bench.fed("sctpbond connect", SCTPBOND + ["connect", *common, "-o", "/dev/null",
                                                                   "--stats-json", str(cstats), "--no-auto", *addrs])
        spies = bench.profile(f"{res.name}-{rep}", {"connect": client, "listen": listener})
        series, link_bytes = bench.watch([client, listener], res.name, bench.links, start)
    finally:
        listener.kill()
        if feeder is not None:
            feeder.kill()
        for s in spies:
            s.wait_dead(10.0)
            s.kill()
    ls, cs = read_json(lstats, res.name, client, listener), read_json(cstats, res.name)
    got = int(ls.get("bytes_received", 0))
    expected = cfg.size if cfg.size is not None else int(cs.get("bytes_sent", -1))
    if got != expected:
        raise BenchError(f"{res.name}: listener received {got} bytes, expected {expected}")
    res.wall_s = client.wall_s
    res.detail = {"listen_stats": ls, "connect_stats": cs,
                  "path_recv_mbit_s": [p.get("recv_mbit_s") for p in stats_paths(ls).values()]}
    res.finish(got, float(ls["elapsed_s"]), link_bytes, series, {"sender": client, "receiver": listener})
    if cs.get("resent_bytes"):
        res.notes.append(f"{cs['resent_bytes']} bytes resent")
    _check_all_links(res)
    return res

"""Emulated multi-NIC hosts: two network namespaces joined by N shaped veth links.

Host "a" (client side) and host "b" (server side) each get one veth end per link, so every link is its own
subnet, 10.77.<i>.0/24, with a = .1 and b = .2. There are no default routes: a packet to 10.77.<i>.2 can only
leave through link i, which is what a striping transport needs to pin each path to one link.

Links, addresses and qdiscs are made over netlink with pyroute2. Loss and blackholes are nftables rules,
installed by running the `nft` binary inside the namespace: pyroute2's nftables module is a thin, partial
netlink binding with no rule parser or expression builder for `numgen`, while `nft -f -` applies a
whole change as one atomic transaction.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import TC_H_ROOT

from sctpbond.errors import SctpbondError

HOSTS = ("a", "b")
MAX_LINKS = 16
# pyroute2 fills only the 32-bit tbf rate field (bytes/s), not TCA_TBF_RATE64: 34 Gbit/s is the ceiling.
MAX_RATE_MBIT = 32_000.0
# Shipped topology files live in <repo>/netns/; an installed wheel may carry them in sctpbond/topologies/.
TOPOLOGY_DIRS = (
    Path(__file__).resolve().parents[2] / "netns",
    Path(__file__).resolve().parents[1] / "topologies",
)
NETNS_DIR = Path(netns.NETNS_RUN_DIR)
NFT_TABLE = "sctpbond"

# tbf tuning. The bucket holds at least 4 ms of tokens, so a HZ=250 timer tick can never cap the rate, and
# at least one 64 KiB GSO/TSO packet plus headers, so tbf never has to split veth's super-packets (a 1 ms
# bucket cost 1 Gbit/s links 3 %). The queue holds QUEUE_MS of traffic. Measured on a 2-core host (one TCP,
# iperf3, cubic and bbr alike): 0.955 x rate at 200 Mbit/s and 1 Gbit/s, which is the ceiling for TCP
# payload over Ethernet framing (1448/1514), with no retransmits; queues of 5-50 ms all gave the same.
BURST_MIN_BYTES = 96 * 1024
BURST_MS = 4.0
QUEUE_MS = 20.0

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,31}$")


class TopologyError(SctpbondError):
    """A topology file is invalid, or namespaces/links could not be built or changed."""


@dataclass(frozen=True)
class LinkSpec:
    """Properties of one emulated link, applied to both directions."""

    rate_mbit: float | None = None  # None = unshaped
    loss_pct: float = 0.0  # random loss via nftables numgen, both directions
    delay_ms: float = 0.0  # needs sch_netem; up() raises TopologyError if the kernel lacks it

    def __post_init__(self) -> None:
        if self.rate_mbit is not None:
            _check_number("rate_mbit", self.rate_mbit)
            if not 0 < self.rate_mbit <= MAX_RATE_MBIT:
                raise TopologyError(f"rate_mbit must be > 0 and <= {MAX_RATE_MBIT:g}, got {self.rate_mbit}")
        _check_number("loss_pct", self.loss_pct)
        if not 0 <= self.loss_pct <= 100:
            raise TopologyError(f"loss_pct must be between 0 and 100, got {self.loss_pct}")
        _check_number("delay_ms", self.delay_ms)
        if self.delay_ms < 0:
            raise TopologyError(f"delay_ms must be >= 0, got {self.delay_ms}")


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    links: tuple[LinkSpec, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.links) <= MAX_LINKS:
            raise TopologyError(f"topology {self.name!r} has {len(self.links)} links; allowed: 1 to {MAX_LINKS}")


def _check_number(key: str, value: object) -> None:
    # bool is an int subclass; `rate_mbit = true` in TOML is a mistake, not 1 Mbit/s.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TopologyError(f"{key} must be a number, got {value!r}")


# --- loading -------------------------------------------------------------------------------------------------

_TOP_KEYS = {"description", "link"}
_LINK_KEYS = {"rate_mbit", "loss_pct", "delay_ms"}


def builtin_names() -> list[str]:
    """Names of the shipped topologies, usable with load()."""
    return sorted({p.stem for d in TOPOLOGY_DIRS if d.is_dir() for p in d.glob("*.toml")})


def _resolve(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    looks_like_path = isinstance(path_or_name, Path) or "/" in str(path_or_name) or path.suffix == ".toml"
    if not looks_like_path:
        for d in TOPOLOGY_DIRS:
            if (d / f"{path_or_name}.toml").is_file():
                return d / f"{path_or_name}.toml"
    raise TopologyError(
        f"no topology {str(path_or_name)!r}: not a file and not one of: {', '.join(builtin_names()) or 'none'}"
    )


def load(path_or_name: str | Path) -> Topology:
    """Read a topology from a TOML file, or from a shipped one by name (e.g. "4x200")."""
    path = _resolve(path_or_name)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TopologyError(f"{path}: cannot read topology: {exc}") from exc
    try:
        return parse(data, name=path.stem)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from None


def parse(data: dict[str, Any], name: str) -> Topology:
    """Validate the decoded TOML document of a topology."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise TopologyError(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: description, [[link]]")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise TopologyError("description must be a string")
    raw_links = data.get("link", [])
    if not isinstance(raw_links, list) or not all(isinstance(x, dict) for x in raw_links):
        raise TopologyError("links must be given as [[link]] tables")
    links = []
    for i, raw in enumerate(raw_links):
        unknown = set(raw) - _LINK_KEYS
        if unknown:
            raise TopologyError(
                f"link {i}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_LINK_KEYS))}"
            )
        try:
            links.append(LinkSpec(**raw))
        except TopologyError as exc:
            raise TopologyError(f"link {i}: {exc}") from None
    return Topology(name=name, description=description, links=tuple(links))


# --- netlink helpers ------------------------------------------------------------------------------------------


def _ns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


@contextmanager
def _ipr(ns: str) -> Iterator[IPRoute]:
    # flags=0: pyroute2's default (O_CREAT) silently creates a missing namespace, which would hide a
    # "network is not up" mistake behind an empty namespace that nobody removes.
    try:
        ipr = IPRoute(netns=ns, flags=0)
    except FileNotFoundError:
        raise TopologyError(f"network namespace {ns} does not exist (is the topology up?)") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TopologyError(f"interface {ifname} not found")
    return int(found[0])


def _tbf_kwargs(rate_mbit: float) -> dict[str, int]:
    rate = int(rate_mbit * 1e6 / 8)  # bytes/s: pyroute2 reads a non-string rate as bytes per second
    burst = max(BURST_MIN_BYTES, int(rate * BURST_MS / 1000))
    return {"rate": rate, "burst": burst, "limit": burst + int(rate * QUEUE_MS / 1000)}


def _root_qdisc(ipr: IPRoute, idx: int) -> str | None:
    for q in ipr.tc("dump", index=idx):
        if q["index"] == idx and q["parent"] == TC_H_ROOT:
            kind = q.get_attr("TCA_KIND")
            return None if kind in ("noqueue", "pfifo_fast", "mq", "fq_codel", "noop") else kind
    return None


def _shape(ipr: IPRoute, idx: int, rate_mbit: float | None, delay_ms: float) -> None:
    """Install the qdiscs of one veth end: [netem delay] -> [tbf rate], or nothing when unshaped."""
    if delay_ms > 0:
        try:
            # Queue for twice the bandwidth-delay product so netem itself never drops.
            pkts = int((rate_mbit or 10_000) * 1e6 / 8 * delay_ms / 1000 / 1500 * 2)
            ipr.tc("add", "netem", idx, handle="1:", delay=int(delay_ms * 1000), limit=max(1000, pkts))
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                raise TopologyError(
                    f"delay_ms={delay_ms:g} needs the netem qdisc (sch_netem), which this kernel lacks; "
                    "drop delay_ms from the topology or run it in the VM"
                ) from None
            raise
        if rate_mbit is not None:
            ipr.tc("add", "tbf", idx, handle="10:", parent="1:1", **_tbf_kwargs(rate_mbit))
    elif rate_mbit is not None:
        ipr.tc("add", "tbf", idx, handle="1:", **_tbf_kwargs(rate_mbit))


def _reshape(ipr: IPRoute, idx: int, rate_mbit: float | None) -> None:
    """Change the rate of one veth end in place, keeping any netem delay above it."""
    root = _root_qdisc(ipr, idx)
    # pyroute2 quirk: "del" does not default parent to the root (the kernel then says EINVAL), so always
    # name the parent explicitly.
    handle, parent = ("10:", "1:1") if root == "netem" else ("1:", TC_H_ROOT)
    if rate_mbit is not None:
        # "replace" on an existing tbf changes it in place, so queued packets are not dropped.
        ipr.tc("replace", "tbf", idx, handle=handle, parent=parent, **_tbf_kwargs(rate_mbit))
        return
    try:
        ipr.tc("del", index=idx, handle=handle, parent=parent)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL):  # already unshaped
            raise


def _tbf_rate_mbit(ipr: IPRoute, idx: int) -> float | None:
    for q in ipr.tc("dump", index=idx):
        if q["index"] == idx and q.get_attr("TCA_KIND") == "tbf":
            parms = q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
            return float(parms["rate"]) * 8 / 1e6
    return None


# --- the network ----------------------------------------------------------------------------------------------


class Network:
    """A built topology: hosts "a" (client side) and "b" (server side) joined by N veth links."""

    def __init__(self, topo: Topology, prefix: str = "sb") -> None:
        if not _PREFIX_RE.match(prefix):
            raise TopologyError(f"namespace prefix {prefix!r} must be 1-32 letters, digits, '_' or '.'")
        self.topo = topo
        self.prefix = prefix
        self.ns_a = f"{prefix}-a"
        self.ns_b = f"{prefix}-b"
        self._procs: list[subprocess.Popen[Any]] = []

    # names and addresses

    @property
    def n_links(self) -> int:
        return len(self.topo.links)

    def ns(self, host: str) -> str:
        if host not in HOSTS:
            raise TopologyError(f"host must be 'a' or 'b', got {host!r}")
        return self.ns_a if host == "a" else self.ns_b

    def _link(self, i: int) -> int:
        if not 0 <= i < self.n_links:
            raise TopologyError(f"link {i} does not exist; topology {self.topo.name} has links 0..{self.n_links - 1}")
        return i

    def ifname(self, host: str, i: int) -> str:
        """Name of host's veth end on link i; names are per namespace, so they need no prefix."""
        self.ns(host)
        return f"veth{self._link(i)}{host}"

    def addr(self, host: str, i: int) -> str:
        """IPv4 address of host "a"/"b" on link i (10.77.<i>.1 / .2, /24)."""
        self.ns(host)
        return f"10.77.{self._link(i)}.{1 if host == 'a' else 2}"

    # lifecycle

    def up(self) -> Self:
        if os.geteuid() != 0:
            raise TopologyError("building network namespaces needs root")
        taken = [n for n in (self.ns_a, self.ns_b) if _ns_exists(n)]
        if taken:
            # Not ours to reuse or delete here: it may belong to a running test or `topo up`.
            what = (
                "namespaces " + " and ".join(taken) + " already exist"
                if len(taken) > 1
                else f"namespace {taken[0]} already exists"
            )
            raise TopologyError(f"network {what}; remove with `sctpbond topo down --prefix {self.prefix}` first")
        try:
            self._build()
        except BaseException as exc:
            self.down()
            if isinstance(exc, NetlinkError):
                raise TopologyError(f"building topology {self.topo.name}: {exc.args[-1]}") from exc
            raise
        return self

    def _build(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            netns.create(ns)
        fd_b = os.open(NETNS_DIR / self.ns_b, os.O_RDONLY)
        try:
            with _ipr(self.ns_a) as ipa, _ipr(self.ns_b) as ipb:
                for ipr in (ipa, ipb):
                    ipr.link("set", index=_index(ipr, "lo"), state="up")
                for i, spec in enumerate(self.topo.links):
                    # Create the pair inside "a" with the peer born in "b": the names never touch the
                    # root namespace, so parallel networks cannot collide on them.
                    peer = {"ifname": self.ifname("b", i), "net_ns_fd": fd_b}
                    ipa.link("add", ifname=self.ifname("a", i), kind="veth", peer=peer)
                    for host, ipr in (("a", ipa), ("b", ipb)):
                        idx = _index(ipr, self.ifname(host, i))
                        ipr.addr("add", index=idx, address=self.addr(host, i), prefixlen=24)
                        # Both ends shaped: egress qdiscs are the only place veth can be shaped, and each
                        # direction of a real link has its own rate.
                        _shape(ipr, idx, spec.rate_mbit, spec.delay_ms)
                        ipr.link("set", index=idx, state="up")
        finally:
            os.close(fd_b)
        for host in HOSTS:
            self._nft(host, self._nft_base(host))
        for i, spec in enumerate(self.topo.links):
            if spec.loss_pct:
                self.set_loss(i, spec.loss_pct)
        self._wait_carrier()

    def _wait_carrier(self, timeout: float = 10.0) -> None:
        """Until every veth end reports carrier (operstate UP): a listener that reads its addresses in the first
        instants would otherwise see the links as down (the peer end comes up a moment later)."""
        deadline = time.monotonic() + timeout
        for host in HOSTS:
            with _ipr(self.ns(host)) as ipr:
                for i in range(self.n_links):
                    idx = _index(ipr, self.ifname(host, i))
                    while ipr.get_links(idx)[0].get_attr("IFLA_OPERSTATE") != "UP":
                        if time.monotonic() > deadline:
                            raise TopologyError(f"{self.ifname(host, i)} in {self.ns(host)} has no carrier")
                        time.sleep(0.02)

    def down(self) -> None:
        """Remove both namespaces (and with them every veth); safe to call at any time, any number of times."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        for ns in (self.ns_a, self.ns_b):
            _remove_ns(ns)

    def is_up(self) -> bool:
        return _ns_exists(self.ns_a) and _ns_exists(self.ns_b)

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # running programs inside a host

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        # nsenter switches only the network namespace; `ip netns exec` also unshares the mount namespace
        # and remounts /sys, which costs time per call and is not needed here.
        return ["nsenter", f"--net={NETNS_DIR / self.ns(host)}", "--", *argv]

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv inside host; down() kills it if it is still running."""
        proc = subprocess.Popen(self.exec_argv(host, argv), **kw)
        self._procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.exec_argv(host, argv), check=kw.pop("check", False), **kw)

    def wait_listening(self, host: str, port: int, timeout: float = 60.0,
                       check: Callable[[], None] | None = None) -> bool:
        """Until a TCP, MPTCP or SCTP socket listens on `port` in `host`; False after `timeout` s. Generous by
        default: Python starts in ~0.2 s here but can take >10 s under software emulation (the SCTP VM) or on a
        loaded machine. `check` runs between polls and may raise (a listener that died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out = self.run(host, ["ss", "-HltSn", f"sport = :{port}"], capture_output=True, text=True,
                               timeout=15).stdout
            except subprocess.TimeoutExpired:  # a slow (emulated) machine: ask again
                out = ""
            if out.strip():
                return True
            if check is not None:
                check()
            time.sleep(0.05)
        return False

    # changing links while they carry traffic

    def set_link(self, i: int, up: bool) -> None:
        """Take both veth ends of link i administratively down (or back up)."""
        for host in HOSTS:
            with _ipr(self.ns(host)) as ipr:
                ipr.link("set", index=_index(ipr, self.ifname(host, i)), state="up" if up else "down")

    def set_rate(self, i: int, rate_mbit: float | None) -> None:
        """Change the rate of link i in both directions; None removes shaping."""
        LinkSpec(rate_mbit=rate_mbit)  # validate
        for host in HOSTS:
            with _ipr(self.ns(host)) as ipr:
                _reshape(ipr, _index(ipr, self.ifname(host, i)), rate_mbit)

    def blackhole(self, i: int, on: bool) -> None:
        """Silently drop every IP packet on link i, both directions, while the link stays up.

        Packets are dropped on arrival (prerouting), never on output: a netfilter drop in the output path
        returns EPERM to the sender, which would announce the failure instead of hiding it. ARP still passes,
        so the kernel does not report "host unreachable" either; the path just goes quiet.
        """
        rule = 'counter drop comment "blackhole"' if on else None
        self._set_link_rule(i, "bh", rule)

    def set_loss(self, i: int, pct: float) -> None:
        """Drop pct % of packets at random on link i, independently in each direction."""
        LinkSpec(loss_pct=pct)  # validate
        per_10k = round(pct * 100)  # 0.01 % resolution
        # nft rejects a constant outside numgen's range (0-9999), so 100 % is a plain drop.
        match = f"numgen random mod 10000 < {per_10k} " if per_10k < 10000 else ""
        rule = f'{match}counter drop comment "loss={pct:g}"' if per_10k else None
        self._set_link_rule(i, "loss", rule)

    def _set_link_rule(self, i: int, kind: str, rule: str | None) -> None:
        self._link(i)
        chain = f"{kind}{i}"
        # One transaction per host: flush and refill the link's own chain, other links are untouched.
        script = f"flush chain inet {NFT_TABLE} {chain}\n"
        if rule:
            script += f"add rule inet {NFT_TABLE} {chain} {rule}\n"
        for host in HOSTS:
            self._nft(host, script)

    def _nft_base(self, host: str) -> str:
        # Each link gets two chains (blackhole, loss) so the two can be changed independently.
        # Priority -300 (raw) runs before conntrack, so dropped packets leave no state behind.
        jumps, chains = [], []
        for i in range(self.n_links):
            dev = self.ifname(host, i)
            jumps += [f'iifname "{dev}" jump bh{i}', f'iifname "{dev}" jump loss{i}']
            chains += [f"chain bh{i} {{\n}}", f"chain loss{i} {{\n}}"]
        body = "\n".join(jumps)
        return (
            f"table inet {NFT_TABLE} {{\n"
            f"chain prerouting {{\ntype filter hook prerouting priority -300; policy accept;\n{body}\n}}\n"
            + "\n".join(chains)
            + "\n}\n"
        )

    def _nft(self, host: str, script: str) -> str:
        try:
            res = self.run(host, ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=20)
        except FileNotFoundError:
            raise TopologyError("the nft command is missing; install the nftables package") from None
        if res.returncode != 0:
            first = (res.stderr.strip().splitlines() or ["no message"])[0]
            raise TopologyError(f"nft in namespace {self.ns(host)} failed: {first}")
        return str(res.stdout)

    def _nft_comments(self, host: str) -> dict[str, str]:
        """Map chain name -> comment of its rule, as read back from the kernel."""
        res = self.run(
            host, ["nft", "-j", "list", "table", "inet", NFT_TABLE], capture_output=True, text=True, timeout=20
        )
        if res.returncode != 0:
            return {}
        out = {}
        for item in json.loads(res.stdout).get("nftables", []):
            rule = item.get("rule")
            if rule and "comment" in rule:
                out[rule["chain"]] = rule["comment"]
        return out

    # reporting

    def describe(self) -> str:
        """Human-readable state; read from the kernel when the network is up, else the spec."""
        topo = self.topo
        lines = [f"topology {topo.name}" + (f": {topo.description}" if topo.description else "")]
        live = self.is_up()
        state = "up" if live else "not up"
        lines.append(f"namespaces: {self.ns_a} (host a, client side), {self.ns_b} (host b, server side): {state}")
        comments = self._nft_comments("a") if live else {}
        for i, spec in enumerate(topo.links):
            rate, link_state = spec.rate_mbit, ""
            if live:
                with _ipr(self.ns_a) as ipr:
                    idx = _index(ipr, self.ifname("a", i))
                    rate = _tbf_rate_mbit(ipr, idx)
                    link_state = "up" if ipr.link("get", index=idx)[0]["flags"] & 1 else "DOWN"
            # The loss rule's comment carries its percentage, so another process's set_loss() shows too.
            loss = comments.get(f"loss{i}", "loss=0") if live else f"loss={spec.loss_pct:g}"
            parts = [
                f"link {i}: {self.ifname('a', i)} {self.addr('a', i)}/24"
                f" <-> {self.ifname('b', i)} {self.addr('b', i)}/24",
                f"rate {'unshaped' if rate is None else f'{rate:g} Mbit/s'}",
                f"loss {loss.split('=')[1]}%",
            ]
            if spec.delay_ms:
                parts.append(f"delay {spec.delay_ms:g} ms")
            if link_state:
                parts.append(link_state)
            if f"bh{i}" in comments:
                parts.append("BLACKHOLED")
            lines.append("  ".join(parts))
        return "\n".join(lines)


def link_counters(net_dev: str) -> dict[str, tuple[int, int]]:
    """(rx_bytes, tx_bytes) per interface from the text of a /proc/<pid>/net/dev (that process's namespace)."""
    out: dict[str, tuple[int, int]] = {}
    for line in net_dev.splitlines()[2:]:  # two header lines
        name, _, fields = line.partition(":")
        if fields:
            values = fields.split()
            out[name.strip()] = int(values[0]), int(values[8])  # 8 receive fields, then the transmit ones
    return out


def _remove_ns(name: str) -> bool:
    if not _ns_exists(name):
        return False
    try:
        netns.remove(name)
    except OSError as exc:
        raise TopologyError(f"cannot remove network namespace {name}: {exc}") from exc
    return True


def cleanup_stale(prefix: str) -> list[str]:
    """Remove leftover namespaces of networks made with `prefix`; returns the names removed.

    Matches "<prefix>-a/-b" and "<prefix><digit>...-a/-b", so cleanup_stale("sbt") removes the tests'
    "sbt1234x0-a" while cleanup_stale("sb") leaves them alone (and removes only sb-a, sb-b, sb2-a, ...).
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d[\w.]*)?-[ab]$")
    return [n for n in sorted(netns.listnetns()) if pattern.match(n) and _remove_ns(n)]

"""sctpbond.lab.topology against the real kernel: namespaces, veth links, tbf shaping, nftables faults."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sctpbond.errors import SctpbondError
from sctpbond.lab import topology
from sctpbond.lab.topology import LinkSpec, Network, Topology, TopologyError, builtin_names, load

pytestmark = pytest.mark.timeout(90)

Factory = Callable[[Topology | str], Network]


def ping(net: Network, i: int) -> bool:
    """One ping from host a to host b over link i, bound to link i's address."""
    argv = ["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", net.addr("a", i), net.addr("b", i)]
    return net.run("a", argv, capture_output=True, timeout=10).returncode == 0


def wait_ping(net: Network, i: int, want: bool, within: float = 5.0) -> bool:
    """Whether ping over link i reaches the wanted outcome within a few seconds (carrier/ARP settle)."""
    deadline = time.monotonic() + within
    while True:
        if ping(net, i) == want:
            return True
        if time.monotonic() > deadline:
            return False


@pytest.fixture(autouse=True)
def _need_ping() -> None:
    if shutil.which("ping") is None:
        pytest.skip("needs the ping command (apt-get install iputils-ping)")


# --- topology files ---------------------------------------------------------------------------------------------


def test_builtin_topologies_load() -> None:
    names = builtin_names()
    assert {"2x200", "4x200", "4x1g", "4-unequal", "4-unequal-1g", "2x20", "4x20"} <= set(names)
    assert [link.rate_mbit for link in load("4-unequal").links] == [400, 200, 100, 50]
    assert load("2x200").description


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('description = "x"\n[[link]]\nrate_mbit = 10\nratee = 3\n', "unknown key"),
        ('colour = "red"\n[[link]]\nrate_mbit = 10\n', "unknown key"),
        ("[[link]]\nrate_mbit = -5\n", "rate_mbit"),
        ("[[link]]\nrate_mbit = true\n", "rate_mbit"),
        ("[[link]]\nloss_pct = 101\n", "loss_pct"),
        ('description = "none"\n', "0 links"),
        ("[[link]]\n" * 17, "17 links"),
        ("[[link]\n", "cannot read"),
    ],
)
def test_invalid_files_give_one_line(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TopologyError, match=words) as info:
        load(path)
    assert isinstance(info.value, SctpbondError)
    assert "\n" not in str(info.value)


def test_unknown_name() -> None:
    with pytest.raises(TopologyError, match=r"not one of.*4x200"):
        load("no-such-topology")


# --- built networks ---------------------------------------------------------------------------------------------


def test_each_link_pings_and_is_shaped(netns_topology: Factory) -> None:
    net = netns_topology("2x200")
    for i in range(2):
        assert net.addr("a", i) == f"10.77.{i}.1" and net.addr("b", i) == f"10.77.{i}.2"
        assert ping(net, i), f"link {i}: {net.addr('b', i)} does not answer"
        for host in ("a", "b"):
            res = net.run(
                host,
                ["tc", "-j", "qdisc", "show", "dev", net.ifname(host, i)],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            root = [q for q in json.loads(res.stdout) if q.get("root")]
            assert root and root[0]["kind"] == "tbf", res.stdout
            assert root[0]["options"]["rate"] == 200_000_000 // 8  # tc -j reports bytes/s
    text = net.describe()
    assert net.ns_a in text and "10.77.1.2/24" in text and "rate 200 Mbit/s" in text


def test_set_link_down_and_up(netns_topology: Factory) -> None:
    net = netns_topology("2x200")
    net.set_link(0, False)
    assert not ping(net, 0), "link 0 is down but still carries traffic"
    assert ping(net, 1), "taking link 0 down broke link 1"
    net.set_link(0, True)
    assert wait_ping(net, 0, True), "link 0 did not come back"


def test_blackhole_and_restore(netns_topology: Factory) -> None:
    net = netns_topology("2x200")
    net.blackhole(1, True)
    assert not ping(net, 1), "blackholed link 1 still answers"
    assert ping(net, 0), "blackholing link 1 broke link 0"
    assert "BLACKHOLED" in net.describe() and "  up" in net.describe().splitlines()[3]  # link stays up
    net.blackhole(1, False)
    assert wait_ping(net, 1, True), "link 1 did not recover from the blackhole"


def test_loss_and_rate_changes(netns_topology: Factory) -> None:
    net = netns_topology("2x200")
    net.set_loss(0, 100)
    assert not ping(net, 0)
    assert "loss 100%" in net.describe()
    net.set_loss(0, 0)
    assert wait_ping(net, 0, True)
    net.set_rate(1, 50)
    assert "rate 50 Mbit/s" in net.describe().splitlines()[3]
    net.set_rate(1, None)
    assert "rate unshaped" in net.describe().splitlines()[3]
    assert ping(net, 1)


def test_delay_needs_netem(netns_topology: Factory) -> None:
    topo = Topology("delayed", "", (LinkSpec(rate_mbit=100, delay_ms=5),))
    try:
        net = netns_topology(topo)
    except TopologyError as exc:  # hosts without sch_netem, like the dev host
        assert "netem" in str(exc) and "\n" not in str(exc)
        return
    res = net.run("a", ["tc", "qdisc", "show", "dev", net.ifname("a", 0)], capture_output=True, text=True, timeout=10)
    assert "netem" in res.stdout and "tbf" in res.stdout


def test_down_leaves_nothing(netns_topology: Factory) -> None:
    net = netns_topology("2x200")
    assert net.is_up()
    net.down()
    assert not net.is_up()
    net.down()  # idempotent
    assert not Path(topology.NETNS_DIR, net.ns_a).exists()


def test_cleanup_stale_removes_leftovers(netns_topology: Factory) -> None:
    net = netns_topology("2x20")
    assert topology.cleanup_stale(net.prefix) == [net.ns_a, net.ns_b]
    assert not net.is_up()
    assert topology.cleanup_stale(net.prefix) == []


def test_partial_up_is_removed(netns_topology: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Network] = []
    real_up = Network.up

    def remember_up(self: Network) -> Network:
        made.append(self)
        return real_up(self)

    def failing_shape(*args: object) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(Network, "up", remember_up)
    monkeypatch.setattr(topology, "_shape", failing_shape)  # fails after both namespaces and veth0 exist
    with pytest.raises(RuntimeError, match="injected"):
        netns_topology("2x200")
    assert made and not Path(topology.NETNS_DIR, made[0].ns_a).exists()
    assert not Path(topology.NETNS_DIR, made[0].ns_b).exists()


# --- shaping accuracy --------------------------------------------------------------------------------------------

_RECEIVER = textwrap.dedent(
    """
    import socket, sys, time
    srv = socket.create_server((sys.argv[1], 5201))
    srv.settimeout(10)
    conn, _ = srv.accept()
    buf, total, start = bytearray(1 << 20), 0, None
    while n := conn.recv_into(buf):
        start = start or time.monotonic()
        total += n
    print(total * 8 / (time.monotonic() - start) / 1e6)
    """
)
_SENDER = textwrap.dedent(
    """
    import socket, sys, time
    for _ in range(50):
        try:
            s = socket.create_connection((sys.argv[1], 5201), timeout=10)
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    data, end = bytes(1 << 20), time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        s.sendall(data)
    s.close()
    """
)


def tcp_goodput_mbit(net: Network, i: int, seconds: float) -> float:
    """Goodput of one TCP connection a -> b over link i, with iperf3 when installed, else Python sockets."""
    dst = net.addr("b", i)
    if shutil.which("iperf3"):
        server = net.popen("b", ["iperf3", "-s", "-1", "-B", dst], stdout=subprocess.DEVNULL)
        try:
            for _ in range(50):  # until the server listens; iperf3 3.12 -J exits 0 even when refused
                res = net.run(
                    "a",
                    ["iperf3", "-c", dst, "-t", str(seconds), "-J"],
                    capture_output=True,
                    text=True,
                    timeout=seconds + 20,
                )
                report = json.loads(res.stdout)
                if "Connection refused" not in report.get("error", ""):
                    break
                time.sleep(0.1)
            assert res.returncode == 0 and "error" not in report, res.stdout[-2000:]
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
        finally:
            server.kill()
            server.wait(timeout=10)
    receiver = net.popen("b", [sys.executable, "-c", _RECEIVER, dst], stdout=subprocess.PIPE, text=True)
    net.run("a", [sys.executable, "-c", _SENDER, dst, str(seconds)], check=True, timeout=seconds + 20)
    out, _ = receiver.communicate(timeout=20)
    return float(out)


def test_one_tcp_gets_the_link_rate(netns_topology: Factory) -> None:
    net = netns_topology("2x200")
    mbit = tcp_goodput_mbit(net, 0, seconds=3)
    # TCP payload over Ethernet framing tops out at 1448/1514 = 0.956 of the shaped L2 rate.
    assert 0.8 * 200 <= mbit <= 1.05 * 200, f"one TCP over a 200 Mbit/s link got {mbit:.1f} Mbit/s"

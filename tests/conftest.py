"""Shared fixtures: emulated multi-link hosts in network namespaces (see sctpbond.lab.topology)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import netns

from sctpbond.lab.topology import Network, Topology, load

# Names are "sbt<pid>x<n>-a/-b": the pid lets a later run recognise namespaces left by a crashed one.
_PREFIX_RE = re.compile(r"^sbt(\d+)x\d+-[ab]$")
_counter = itertools.count()


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run the integration tests as root)"
    for tool, package in (("nft", "nftables"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"needs the {tool} command (apt-get install {package})"
    return None


@pytest.fixture(scope="session", autouse=True)
def _remove_namespaces_of_dead_runs() -> None:
    """A run killed mid-test (SIGKILL) cannot clean up: remove namespaces whose creating pid is gone."""
    if os.geteuid() != 0:
        return
    for name in netns.listnetns():
        m = _PREFIX_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            netns.remove(name)


@pytest.fixture
def netns_topology() -> Iterator[Callable[[Topology | str], Network]]:
    """Factory: netns_topology("2x200") or netns_topology(Topology(...)) -> a Network that is up.

    Every network made is taken down at teardown, whether the test passed, failed or timed out in Python.
    """
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    made: list[Network] = []

    def make(topo: Topology | str) -> Network:
        t = topo if isinstance(topo, Topology) else load(topo)
        net = Network(t, prefix=f"sbt{os.getpid()}x{next(_counter)}")
        made.append(net)  # before up(): a half-built network is removed too
        return net.up()

    try:
        yield make
    finally:
        for net in made:
            net.down()

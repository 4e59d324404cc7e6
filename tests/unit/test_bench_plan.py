"""`sctpbond bench` planning: which baselines run, and which are skipped with a reason, on which kernel."""

from __future__ import annotations

import pytest

from sctpbond.lab.bench import plan
from sctpbond.lab.rig import BenchConfig


def _cfg(baselines: list[str]) -> BenchConfig:
    return BenchConfig(topology="4x20", transports=[], baselines=baselines, size=1 << 20, seconds=None, paths=None)


def test_parallel_baselines_run_one_iperf3_per_link_at_once_for_each_protocol() -> None:
    todo, skipped = plan(_cfg(["tcp-parallel", "sctp-parallel"]), 4, {"kernel_sctp": True})
    assert todo == [("tcp-parallel", "iperf_parallel", ("tcp",)), ("sctp-parallel", "iperf_parallel", ("sctp",))]
    assert skipped == []


@pytest.mark.parametrize("baseline", ["sctp", "sctp-parallel"])
def test_sctp_baselines_are_skipped_with_a_reason_without_kernel_sctp(baseline: str) -> None:
    todo, skipped = plan(_cfg([baseline]), 4, {"kernel_sctp": False})
    assert todo == []
    assert [r.skipped for r in skipped] == [True]
    assert "no SCTP" in skipped[0].notes[0]


def test_link_counters_parse_proc_net_dev() -> None:
    from sctpbond.lab.topology import link_counters

    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
        "carrier compressed\n"
        "    lo:    1200      12    0    0    0     0          0         0     1200      12    0    0    0     0"
        "       0          0\n"
        "sbb1a0: 98765     70    0    0    0     0          0         0 123456789   9000    0    3    0     0"
        "       0          0\n"
    )
    assert link_counters(text) == {"lo": (1200, 1200), "sbb1a0": (98765, 123456789)}

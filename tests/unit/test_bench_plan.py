"""`sctpbond bench` planning: which baselines run, and which are skipped with a reason, on which kernel."""

from __future__ import annotations

import pytest

from sctpbond.bench import BenchConfig, plan


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

"""The memory benchmark (silo/bench/memory.py) at a tiny size: it fills, reopens in a child
process, leases and reports figures that make sense."""

from __future__ import annotations

import pytest

from silo.bench.memory import run_memory


def test_tiny_memory_run_reports_consistent_figures() -> None:
    r = run_memory(scheduled=300, ready=40, progress=False)
    assert (r.scheduled, r.ready) == (300, 40)
    assert 0 < r.open_s <= r.first_lease_s
    assert 0 < r.rss_before_open_mib <= r.peak_rss_mib
    assert r.rss_after_open_mib <= r.peak_rss_mib


def test_a_memory_run_with_parked_jobs_reports_them() -> None:
    r = run_memory(scheduled=50, ready=10, progress=False, parked=30)
    assert (r.scheduled, r.ready, r.parked) == (50, 10, 30)
    assert 0 < r.open_s <= r.first_lease_s


def test_memory_run_refuses_no_ready_jobs() -> None:
    with pytest.raises(SystemExit):
        run_memory(scheduled=10, ready=0, progress=False)

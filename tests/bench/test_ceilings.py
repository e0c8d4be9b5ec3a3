"""The derived ceiling and the synced-write probe (silo/bench/ceilings.py)."""

from __future__ import annotations

import pytest

from silo.bench.ceilings import Ceilings, derived_ceiling, measure_sync_write


def test_derived_ceiling_is_one_over_round_trip_plus_sync() -> None:
    assert derived_ceiling(0.62e-3, 0.21e-3) == pytest.approx(1 / 0.83e-3)
    c = Ceilings(1500.0, 3000.0, 0.5e-3, 0.5e-3, 1e-3)
    assert c.durable_call_per_s == pytest.approx(1000.0)


def test_derived_ceiling_refuses_a_zero_round_trip() -> None:
    with pytest.raises(ValueError):
        derived_ceiling(0.0, 1e-3)


def test_sync_write_probe_measures_and_leaves_nothing(tmp_path) -> None:
    result = measure_sync_write(str(tmp_path), writes=5)
    assert result.writes == 5
    assert 0 < result.p50_s <= result.p99_s
    assert result.mean_s > 0
    assert list(tmp_path.iterdir()) == []

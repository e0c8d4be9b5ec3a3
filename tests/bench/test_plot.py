"""The ratios-over-commits plot (silo/bench/plot.py)."""

from __future__ import annotations

import pytest

from silo.bench.plot import plot_ratios, ratio_series


def rec(commit: str, dirty: bool, single: float | None) -> dict:
    return {"kind": "silo.bench.peers", "commit": commit, "dirty": dirty,
            "ratios": {"silo_over_pgqueuer": {"single": single, "bulk": 0.5, "processing": 1.2},
                       "single_over_ceiling": {"silo": 0.3, "pgqueuer": 1.1}}}


def test_series_have_one_value_per_record_labelled_by_commit() -> None:
    labels, series = ratio_series([rec("abcdef0123", False, 0.2), rec("1234567890", True, None)])
    assert labels == ["abcdef01", "12345678*"]
    assert series["single"] == [0.2, None]
    assert series["processing"] == [1.2, 1.2]
    assert series["ceiling"] == [0.3, 0.3]


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "ratios.png"
    plot_ratios([rec("abcdef0123", False, 0.2), rec("1234567890", False, 0.3)], str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_refuses_an_empty_history(tmp_path) -> None:
    with pytest.raises(ValueError):
        plot_ratios([], str(tmp_path / "x.png"))

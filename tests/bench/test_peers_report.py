"""Medians, ratios, the table and the JSON lines of the peers benchmark
(silo/bench/peers_report.py)."""

from __future__ import annotations

import json

import pytest

from silo.bench.ceilings import Ceilings
from silo.bench.peers_report import (
    append_record,
    build_record,
    format_table,
    median_or_none,
    read_records,
)
from silo.bench.rounds import RoundResult


def rr(lib: str, n: int, single: float, bulk: float, proc: float | None,
       once: bool = True) -> RoundResult:
    return RoundResult(lib, n, 100, single, bulk, proc, once, "detail of the round")


def record(silo_once: bool = True) -> dict:
    rounds = [
        rr("pgqueuer", 1, 1000, 40000, 5000), rr("silo", 1, 400, 10000, 6000),
        rr("pgqueuer", 2, 1200, 50000, 6000), rr("silo", 2, 500, 20000, 9000, silo_once),
        rr("pgqueuer", 3, 1800, 60000, 7000), rr("silo", 3, 600, 30000, None),
    ]
    ceilings = [Ceilings(1500, 3000, 0.6e-3, 0.2e-3, 1e-3),
                Ceilings(1400, 2900, 0.7e-3, 0.3e-3, 2e-3),
                Ceilings(1600, 3100, 0.5e-3, 0.1e-3, 3e-3)]
    return build_record(config={"jobs": 100, "rounds": 3, "batch": 500, "workers": 2},
                        rounds=rounds, ceilings=ceilings, versions={"pgqueuer": "1.6.0"},
                        commit="0123456789abcdef" * 2 + "01234567", dirty=False,
                        time_utc="2026-01-01T00:00:00Z")


def test_medians_skip_missing_values() -> None:
    assert median_or_none([3.0, None, 1.0, 2.0]) == 2.0
    assert median_or_none([None]) is None


def test_record_holds_medians_and_ratios_of_the_medians() -> None:
    rec = record()
    assert rec["median"]["pgqueuer"] == {"single_per_s": 1200, "bulk_per_s": 50000,
                                         "processing_per_s": 6000}
    # the round that could not time processing is left out of the median
    assert rec["median"]["silo"]["processing_per_s"] == 7500
    ratios = rec["ratios"]["silo_over_pgqueuer"]
    assert ratios["single"] == pytest.approx(500 / 1200)
    assert ratios["bulk"] == pytest.approx(0.4)
    assert ratios["processing"] == pytest.approx(1.25)
    c = rec["median"]["ceilings"]
    assert c["echo_ms"] == pytest.approx(0.6)
    assert c["sync_write_ms"] == pytest.approx(0.2)
    assert c["durable_call_per_s"] == pytest.approx(1 / 0.8e-3)
    assert rec["ratios"]["single_over_ceiling"]["silo"] == pytest.approx(500 * 0.8e-3)
    assert rec["exactly_once"] == {"pgqueuer": True, "silo": True}


def test_table_shows_rates_ratios_and_ceilings() -> None:
    text = format_table(record())
    assert "(a) single enqueue, sequential" in text
    assert "1,200" in text and "500" in text and "0.42x" in text
    assert "1.25x" in text  # processing silo/pgqueuer
    assert "0.40x" in text  # silo single over the derived ceiling of 1,250/s
    assert "1,250" in text
    assert "0.600 ms" in text and "0.200 ms" in text
    assert "NO" not in text
    assert "commit 0123456789ab" in text


def test_table_names_every_round_that_was_not_exactly_once() -> None:
    text = format_table(record(silo_once=False))
    assert "NOT exactly once: silo round 2: detail of the round" in text
    row = next(line for line in text.splitlines() if line.startswith("exactly once"))
    assert row.split()[-2:] == ["yes", "NO"]


def test_results_file_appends_one_line_per_run_and_skips_foreign_lines(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('not json\n{"kind": "other"}\n\n')
    append_record(str(path), record())
    append_record(str(path), record(silo_once=False))
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[3])["exactly_once"]["silo"] is True
    got = read_records(str(path))
    assert [r["exactly_once"]["silo"] for r in got] == [True, False]
    assert got[0]["ratios"] == record()["ratios"]

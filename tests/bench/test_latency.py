"""The latency benchmark end to end with a tiny workload (a real server and `silo worker`
processes), so that it cannot rot."""

from __future__ import annotations

import json

import pytest

from silo.bench.__main__ import main
from silo.bench.latency import CLIENTS, LatencyConfig, percentile, run_latency


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_config_is_checked() -> None:
    for bad in (LatencyConfig(jobs=0), LatencyConfig(peak_jobs=1), LatencyConfig(clients=()),
                LatencyConfig(clients=("trio", "nope")), LatencyConfig(load_fraction=0),
                LatencyConfig(prefetch=-1)):
        with pytest.raises(ValueError):
            bad.check()


def test_tiny_run_measures_every_client() -> None:
    result = run_latency(LatencyConfig(jobs=12, peak_jobs=30, workers=1, max_seconds=20))
    assert result.peak_per_s > 0
    assert [c.client for c in result.clients] == list(CLIENTS)
    for c in result.clients:
        assert c.sent == c.started == 12
        assert c.target_per_s == pytest.approx(max(1.0, result.peak_per_s / 2))
        assert 0 < c.p50_ms <= c.p99_ms <= c.max_ms < 20_000


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["latency", "--jobs", "5", "--peak-jobs", "10", "--workers", "1",
                 "--clients", "asyncio", "--prefetch", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["config"]["prefetch"] == 0
    assert "prefetch 0" in record["worker_settings"]
    (client,) = record["clients"]
    assert client["client"] == "asyncio" and client["sent"] == 5

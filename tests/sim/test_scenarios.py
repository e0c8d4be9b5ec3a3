"""Every scenario passes a couple of seeds, and actually exercises what it is about."""

from __future__ import annotations

import pytest

from scenarios import SCENARIOS
from sim.runner import run_one

EXPECTED_FAULTS = {
    "lease_expiry": ("net.partition", "worker.crash"),
    "message_loss": ("net.drop.request", "net.drop.response", "net.duplicate"),
    "high_latency": ("net.reorder",),
    "chaos": ("net.partition", "clock.jump", "worker.crash"),
    "crash_restart": ("node.crash",),
    "disk_errors": ("disk.write.error", "shard.write.error"),
    "retry_storm": ("worker.crash",),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("seed", [0, 1])
def test_scenario_passes(scenario: str, seed: int) -> None:
    r = run_one(scenario, seed)
    assert r.exit_code == 0, f"{r.replay}\n{r.message}\n" + "\n".join(r.evidence)
    assert r.params, "a scenario records the parameters it drew"
    assert r.events > 0
    expected = EXPECTED_FAULTS.get(scenario)
    if expected:
        assert any(r.fired.get(point) for point in expected), r.fired


def test_scenarios_run_jobs_to_completion() -> None:
    r = run_one("happy", 2)
    assert r.exit_code == 0
    assert r.stats.get("enqueue.acked", 0) == r.params["jobs"]

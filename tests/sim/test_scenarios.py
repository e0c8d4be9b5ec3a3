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
    "concurrency": ("net.drop.request", "net.drop.response", "net.duplicate", "node.crash"),
    "floating": ("worker.crash",),
}

CLUSTER_SCENARIOS = ("cluster_membership",)

NODE_CLUSTER_SCENARIOS = {
    # A cluster of real nodes with traffic (sim/cluster_nodes.py): the stats that show it did
    # what it is about, besides running jobs.
    "rebalance_under_load": ("cluster.moves",),
    "partition_owner": ("cluster.partition_owner",),
    "etcd_outage": ("cluster.etcd_outage",),
    "stale_routing": ("cluster.moves",),
    "cluster_traffic": ("cluster.moves",),
}

LIMITS_SCENARIOS = ("concurrency", "grant_race", "retry_releases", "cancel_releases", "floating",
                    "rate_limits", "head_of_line")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("seed", [0, 1])
def test_scenario_passes(scenario: str, seed: int) -> None:
    r = run_one(scenario, seed)
    assert r.exit_code == 0, f"{r.replay}\n{r.message}\n" + "\n".join(r.evidence)
    assert r.params, "a scenario records the parameters it drew"
    if scenario in CLUSTER_SCENARIOS:
        # No jobs: what it exercises is shards moving between members.
        assert r.stats.get("cluster.join", 0) > 0 and r.stats.get("cluster.moves", 0) > 0, \
            r.stats
    else:
        assert r.events > 0
    for stat in NODE_CLUSTER_SCENARIOS.get(scenario, ()):
        assert r.stats.get(stat, 0) > 0, r.stats
    expected = EXPECTED_FAULTS.get(scenario)
    if expected:
        assert any(r.fired.get(point) for point in expected), r.fired


def test_scenarios_run_jobs_to_completion() -> None:
    r = run_one("happy", 2)
    assert r.exit_code == 0
    assert r.stats.get("enqueue.acked", 0) == r.params["jobs"]


@pytest.mark.parametrize("scenario", LIMITS_SCENARIOS)
def test_limits_scenarios_exercise_their_limits(scenario: str) -> None:
    r = run_one(scenario, 2)
    assert r.exit_code == 0, f"{r.replay}\n{r.message}\n" + "\n".join(r.evidence)
    if scenario != "rate_limits" or r.stats.get("slots.granted"):
        assert r.stats["slots.granted"] == r.stats["slots.released"] > 0
    if scenario == "retry_releases":
        assert r.stats["slots.granted_during_backoff"] > 0  # the slot is free during backoff
    if scenario == "floating":
        assert r.stats.get("refresh.ok", 0) + r.stats.get("refresh.failed", 0) > 0
    if scenario == "rate_limits":
        assert 0 < r.stats["task.max_moves_per_attempt"] <= 4
    if scenario == "head_of_line":
        assert r.stats["hol.flood_jobs"] > 0 and r.stats["hol.other_jobs"] > 0
        assert r.stats["hol.other_max_ms"] <= 6000


def test_floating_refresh_leases_expire_in_some_seed() -> None:
    assert any(run_one("floating", seed).stats.get("refresh.reaped") for seed in range(1, 4))

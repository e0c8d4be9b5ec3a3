"""Dishonest and unlucky actors: the zombie's calls are recorded and fenced off, the vanisher's
leases expire, and a fencing hole is caught."""

from __future__ import annotations

import random

import pytest

import scenarios
from silo.shard.leasing import Leasing
from sim.actors import ZOMBIE_MODES
from sim.invariants import Invariant
from sim.runner import run_one
from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def _dishonest(sim: Simulator, rng: random.Random) -> None:
    w = Workload.draw(
        rng, sim.param, edges=False, shards=2, lease_ms=1000, jobs=30, producers=2,
        workers=2, concurrency=2, max_duration_ms=Span(1500, 3000), fail_prob=0.0,
        retry_count=(3, 3), zombie=True, vanisher=True, slow_worker=True, retrying_client=True,
        fault_s=25.0, bound_s=200.0,
    )
    await run_workload(sim, rng, w, FaultPlan(rates={"net.drop.response": 0.05}))


def test_dishonest_actors_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(scenarios.SCENARIOS, "dishonest", _dishonest)
    r = run_one("dishonest", 4)
    assert r.exit_code == 0, r.message + "\n".join(r.evidence)
    modes = {k.split(".")[1] for k in r.stats if k.startswith("zombie.") and k.count(".") == 3}
    assert modes == set(ZOMBIE_MODES), r.stats
    refused = {k: v for k, v in r.stats.items()
               if k.startswith("zombie.") and not k.endswith(".OK")}
    assert sum(refused.values()) > 0
    assert r.stats.get("vanisher.vanished_with", 0) > 0
    assert r.stats.get("enqueue.acked") == 30


def test_a_fencing_hole_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats stop checking the lease's owner: the zombie's stolen heartbeats get OK."""

    def any_worker_owns(self: Leasing, worker_id: str, task_id: str) -> object:
        lease = self._mirror.leases.get(task_id)  # type: ignore[attr-defined]
        if lease is None:
            from silo.errors import NotFound

            raise NotFound(f"lease not found for task {task_id!r}")
        return lease

    monkeypatch.setattr(Leasing, "_owned_lease", any_worker_owns)
    monkeypatch.setitem(scenarios.SCENARIOS, "dishonest", _dishonest)
    for seed in range(1, 6):
        r = run_one("dishonest", seed)
        if r.exit_code:
            assert r.invariant == Invariant.FENCING and "fencing" in r.message, r.message
            return
    pytest.fail("a heartbeat of another worker's lease was accepted and nothing noticed")

"""A zombie worker (sim.actors) heartbeats and reports task ids it never owned, owned before a
reap, or took from another worker's live lease: fencing holds, and nothing it says changes state.

Parameters: ``Workload.draw`` without edges (shards 1-3, 20-60 jobs, 1-3 workers, lease 1-4 s),
with the zombie always on, mild message loss and, sometimes, worker crashes.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(
        rng, p, edges=False, shards=Span(1, 3), lease_ms=Span(1000, 4000), jobs=Span(20, 60),
        workers=Span(1, 3), zombie=True, fault_s=Span(6.0, 15.0), bound_s=200.0,
    )
    plan = FaultPlan(
        rates={"net.drop.request": p("drop", round(rng.uniform(0.0, 0.03), 4))},
        worker_crash_every_s=p("worker_crash_every_s", rng.choice([None, 4.0, 8.0])),
    )
    await run_workload(sim, rng, w, plan)

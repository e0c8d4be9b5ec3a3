"""A zombie worker heartbeats and reports task ids leased to other workers: fencing holds.

Parameters: the happy mix (shards 1-3, 20-60 jobs, 1-3 workers, lease 1-4 s) plus a zombie
calling every 0.05-0.5 s during the fault phase, with mild message loss and worker crashes.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, run_workload
from sim.zombie import run_zombie


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=p("shards", rng.randint(1, 3)),
        lease_ms=p("lease_ms", rng.randint(1000, 4000)),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(20, 60)),
        spread_s=p("spread_s", round(rng.uniform(2.0, 10.0), 3)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(1, 6)),
        duration_ms=(0, p("max_duration_ms", rng.randint(200, 2500))),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.3), 3)),
        fault_s=p("run_s", round(rng.uniform(6.0, 15.0), 3)),
    )
    every_s = p("zombie_every_s", round(rng.uniform(0.05, 0.5), 3))
    plan = FaultPlan(
        rates={"net.drop.request": p("drop", round(rng.uniform(0.0, 0.03), 4))},
        worker_crash_every_s=p("worker_crash_every_s", rng.choice([None, 4.0, 8.0])),
    )
    sim.spawn_fault_phase(run_zombie, sim, sim.random.stream("zombie"), every_s)
    await run_workload(sim, rng, w, plan)

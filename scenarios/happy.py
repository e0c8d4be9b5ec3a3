"""Many producers and workers, no faults: everything enqueued runs to completion.

Parameters: shards 1-4, producers 1-4, jobs 20-80 (some batched, some scheduled ahead), workers
1-4 with concurrency 1-8, lease 1-5 s, handler durations 0-2 s, a few planned failures.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=p("shards", rng.randint(1, 4)),
        lease_ms=p("lease_ms", rng.randint(1000, 5000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 3.0), 3)),
        producers=p("producers", rng.randint(1, 4)),
        jobs=p("jobs", rng.randint(20, 80)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.4), 3)),
        spread_s=p("spread_s", round(rng.uniform(2.0, 15.0), 3)),
        tenants=p("tenants", rng.randint(1, 5)),
        task_groups=p("task_groups", rng.randint(1, 2)),
        workers=p("workers", rng.randint(1, 4)),
        concurrency=p("concurrency", rng.randint(1, 8)),
        duration_ms=(0, p("max_duration_ms", rng.randint(100, 2000))),
        future_prob=p("future_prob", round(rng.uniform(0.0, 0.3), 3)),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.2), 3)),
        ignore_cancel_prob=0.0,
        fault_s=p("run_s", round(rng.uniform(5.0, 20.0), 3)),
        bound_s=120.0,
    )
    await run_workload(sim, rng, w, FaultPlan())

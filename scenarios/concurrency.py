"""Concurrency limits under chaos-lite: several queues with small maxes, a few tenants, message
loss and duplication, a node crash and restart. A queue never holds more slots than its max.

Parameters: 2-4 queues with a fixed max of 1-3 each, 70-100% of jobs carrying 1-2 of them
(named in a random order: the shard acquires them in queue order), tenants 1-3, jobs 20-45, message
drop/duplicate 0-4% each, a crash every 5-15 s (restart after 0.1-2 s), shards 1-2, lease 1-3 s,
durations 0-600 ms, 0-20% planned failures with up to 2 retries.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, concurrency_mix, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    nq = p("queues", rng.randint(2, 4))
    maxes = p("queue_max", [rng.randint(1, 3) for _ in range(nq)])
    w = Workload(
        shards=p("shards", rng.randint(1, 2)),
        lease_ms=p("lease_ms", rng.randint(1000, 3000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 4.0), 3)),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(20, 45)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.4), 3)),
        spread_s=p("spread_s", round(rng.uniform(1.0, 8.0), 3)),
        tenants=p("tenants", rng.randint(1, 3)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(2, 6)),
        duration_ms=(0, p("max_duration_ms", rng.randint(100, 600))),
        future_prob=p("future_prob", round(rng.uniform(0.0, 0.3), 3)),
        future_ms=(200, 3000),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.2), 3)),
        fault_s=p("fault_s", round(rng.uniform(6.0, 15.0), 3)),
        limits=concurrency_mix(maxes, p("limited_prob", round(rng.uniform(0.7, 1.0), 3)),
                               max_per_job=2, any_order=True),
        bound_s=150.0,
    )
    faults = FaultPlan(
        rates={
            "net.drop.request": p("drop_request", round(rng.uniform(0.0, 0.04), 4)),
            "net.drop.response": p("drop_response", round(rng.uniform(0.0, 0.04), 4)),
            "net.duplicate": p("duplicate", round(rng.uniform(0.0, 0.04), 4)),
        },
        crash_every_s=p("crash_every_s", round(rng.uniform(5.0, 15.0), 3)),
        restart_delay_s=(0.1, 2.0),
    )
    await run_workload(sim, rng, w, faults)

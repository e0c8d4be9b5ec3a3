"""Writes fail with I/O errors (at the disk and at the shard's store); the shard must roll back
its in-memory state, answer UNAVAILABLE, and carry on.

Parameters: disk.write.error 1-10%, shard.write.error 1-10%, write latency 0.2-4 ms, lease 1-4 s,
jobs 20-60, workers 1-3.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=p("shards", rng.randint(1, 3)),
        lease_ms=p("lease_ms", rng.randint(1000, 4000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 4.0), 3)),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(20, 60)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.3), 3)),
        spread_s=p("spread_s", round(rng.uniform(3.0, 15.0), 3)),
        tenants=p("tenants", rng.randint(1, 4)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(1, 6)),
        duration_ms=(0, p("max_duration_ms", rng.randint(100, 2000))),
        future_prob=p("future_prob", round(rng.uniform(0.0, 0.3), 3)),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.2), 3)),
        fault_s=p("fault_s", round(rng.uniform(10.0, 25.0), 3)),
        bound_s=150.0,
    )
    faults = FaultPlan(
        rates={
            "disk.write.error": p("disk_write_error", round(rng.uniform(0.01, 0.10), 3)),
            "shard.write.error": p("shard_write_error", round(rng.uniform(0.01, 0.10), 3)),
        }
    )
    await run_workload(sim, rng, w, faults)

"""Slow, jittery links: long latencies, heavy reordering, calls that time out and are retried.

Parameters: one-way latency from 1-50 ms up to 100-600 ms, reordering 5-30% of messages by an
extra 0.2-2.6 s (past the clients' 2 s call timeout), a slow disk (writes take 0.2-30 ms),
lease 3-6 s, jobs 15-50, workers 1-3.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    lo = p("latency_min_ms", round(rng.uniform(1.0, 50.0), 3))
    hi = p("latency_max_ms", round(rng.uniform(100.0, 600.0), 3))
    w = Workload(
        shards=p("shards", rng.randint(1, 3)),
        lease_ms=p("lease_ms", rng.randint(3000, 6000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 30.0), 3)),
        latency_ms=(lo, hi),
        reorder_ms=(200.0, p("reorder_max_ms", round(rng.uniform(300.0, 2600.0), 3))),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(15, 50)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.3), 3)),
        spread_s=p("spread_s", round(rng.uniform(3.0, 15.0), 3)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(1, 6)),
        duration_ms=(0, p("max_duration_ms", rng.randint(200, 3000))),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.15), 3)),
        fault_s=p("fault_s", round(rng.uniform(10.0, 25.0), 3)),
        bound_s=180.0,
    )
    faults = FaultPlan(rates={"net.reorder": p("reorder", round(rng.uniform(0.05, 0.3), 3))})
    await run_workload(sim, rng, w, faults)

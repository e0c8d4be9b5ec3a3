"""The node crashes mid-load (losing what was not durable) and restarts on the same disk with the
same node id; sometimes it is also stopped and started cleanly. No acknowledged enqueue is lost.

Parameters: a crash every 2-8 s during a 10-25 s fault phase, restart after 0.05-3 s, a clean
restart every 8-30 s in half the runs, disk write latency 1-8 ms (so writes are in flight when the
crash comes), producers 2-4, jobs 30-90, batches up to 50% of enqueues, lease 1-4 s.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=p("shards", rng.randint(1, 4)),
        lease_ms=p("lease_ms", rng.randint(1000, 4000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(1.0, 8.0), 3)),
        producers=p("producers", rng.randint(2, 4)),
        jobs=p("jobs", rng.randint(30, 90)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.5), 3)),
        spread_s=p("spread_s", round(rng.uniform(5.0, 20.0), 3)),
        tenants=p("tenants", rng.randint(1, 5)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(1, 8)),
        duration_ms=(0, p("max_duration_ms", rng.randint(100, 2500))),
        future_prob=p("future_prob", round(rng.uniform(0.0, 0.3), 3)),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.2), 3)),
        fault_s=p("fault_s", round(rng.uniform(10.0, 25.0), 3)),
        bound_s=150.0,
    )
    clean = rng.random() < 0.5
    faults = FaultPlan(
        crash_every_s=p("crash_every_s", round(rng.uniform(2.0, 8.0), 3)),
        clean_restart_every_s=p(
            "clean_restart_every_s", round(rng.uniform(8.0, 30.0), 3) if clean else None
        ),
        restart_delay_s=(0.05, p("max_restart_delay_s", round(rng.uniform(0.1, 3.0), 3))),
    )
    await run_workload(sim, rng, w, faults)

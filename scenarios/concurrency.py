"""Concurrency limits under chaos-lite: several queues with small maxes, a few tenants, message
loss and duplication, a node crash and restart. A queue never holds more slots than its max.

Parameters: 2-4 queues with a fixed max of 1-3 each, 70-100% of jobs carrying 1-2 of them
(named in a random order: the shard acquires them in queue order), tenants 1-3, jobs 20-45, message
drop/duplicate 0-4% each, a crash every 5-15 s (restart after 0.1-2 s), shards 1-2, lease 1-3 s,
durations 0-600 ms, 0-20% planned failures with up to 2 retries.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, concurrency_mix, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    nq = p("queues", rng.randint(2, 4))
    maxes = p("queue_max", [rng.randint(1, 3) for _ in range(nq)])
    w = Workload.draw(
        rng, p, shards=Span(1, 2), lease_ms=Span(1000, 3000), jobs=Span(20, 45),
        concurrency=Span(2, 6), max_duration_ms=Span(100, 600), future_ms=(200, 3000),
        fault_s=Span(6.0, 15.0), bound_s=150.0, limit_mode="none",
        limits=concurrency_mix(maxes, p("limited_prob", round(rng.uniform(0.7, 1.0), 3)),
                               max_per_job=2, any_order=True),
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

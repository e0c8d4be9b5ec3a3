"""Enqueue answers get lost while an operator deletes finished jobs: a client's retry arrives
after the job its first try created has run and been deleted, and must not create it again.

Parameters: response loss 10-30%, request loss 0-5%, short handlers (0-100 ms), jobs 20-40,
1-2 tenants, 1-3 workers, an operator action every 0.05-0.2 s (mostly deletes), lease 2-4 s.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=p("shards", rng.randint(1, 2)),
        lease_ms=p("lease_ms", rng.randint(2000, 4000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 2.0), 3)),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(20, 40)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.5), 3)),
        spread_s=p("spread_s", round(rng.uniform(2.0, 8.0), 3)),
        tenants=p("tenants", rng.randint(1, 2)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(2, 6)),
        duration_ms=(0, p("max_duration_ms", rng.randint(20, 100))),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.1), 3)),
        operator_every_s=p("operator_every_s", round(rng.uniform(0.05, 0.2), 3)),
        operator_weights={"cancel": 1, "restart": 1, "expedite": 1, "delete": 12},
        fault_s=p("fault_s", round(rng.uniform(10.0, 20.0), 3)),
        bound_s=150.0,
    )
    faults = FaultPlan(
        rates={
            "net.drop.response": p("drop_response", round(rng.uniform(0.10, 0.30), 3)),
            "net.drop.request": p("drop_request", round(rng.uniform(0.0, 0.05), 3)),
        },
    )
    await run_workload(sim, rng, w, faults)

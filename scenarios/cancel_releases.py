"""An operator cancels (and restarts, expedites, deletes) limited jobs that are parked, ready or
running: a cancel of a queued job releases its slots and drops its request at once, a cancel of
a running one when its worker reports; the freed slots go to the next requests.

Parameters: 1-3 queues of max 1-2, every job limited (1-2 queues, named in a random order), jobs
20-45, 1-2 tenants, durations 200-2500 ms, 0-30% scheduled ahead, 20-40% ignoring cancels, an
operator action every 0.1-0.6 s (mostly cancels), 1-3 workers with 1-4 slots, lease 1-3 s,
message loss 0-2%.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, concurrency_mix, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    nq = p("queues", rng.randint(1, 3))
    w = Workload(
        shards=p("shards", rng.randint(1, 2)),
        lease_ms=p("lease_ms", rng.randint(1000, 3000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 3.0), 3)),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(20, 45)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.5), 3)),
        spread_s=p("spread_s", round(rng.uniform(0.5, 5.0), 3)),
        tenants=p("tenants", rng.randint(1, 2)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(1, 4)),
        duration_ms=(200, p("max_duration_ms", rng.randint(300, 2500))),
        future_prob=p("future_prob", round(rng.uniform(0.0, 0.3), 3)),
        future_ms=(300, 3000),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.2), 3)),
        ignore_cancel_prob=p("ignore_cancel_prob", round(rng.uniform(0.2, 0.4), 3)),
        operator_every_s=p("operator_every_s", round(rng.uniform(0.1, 0.6), 3)),
        operator_weights={"cancel": 8, "restart": 2, "expedite": 2, "delete": 1},
        fault_s=p("fault_s", round(rng.uniform(5.0, 12.0), 3)),
        limits=concurrency_mix([rng.randint(1, 2) for _ in range(nq)], 1.0, max_per_job=2,
                               any_order=True),
        bound_s=150.0,
    )
    faults = FaultPlan(
        rates={"net.drop.response": p("drop_response", round(rng.uniform(0.0, 0.02), 4))},
    )
    await run_workload(sim, rng, w, faults)

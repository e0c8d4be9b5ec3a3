"""Many short jobs on one queue with a max of 1-2 and many workers, so that releases and grants
race: every release regrants in its own batch, and no slot is ever granted twice or past the max.

Parameters: one queue of max 1-2 (per tenant, 1-2 tenants), jobs 30-60 enqueued within 0.3-2 s
(up to 70% in batches), 4-8 workers with 2-4 slots, durations 0-60 ms, lease 1-3 s, 0-15% planned
failures with up to 2 retries (backoff 50-500 ms), message duplication 0-3%.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, concurrency_mix, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=1,
        lease_ms=p("lease_ms", rng.randint(1000, 3000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 3.0), 3)),
        producers=p("producers", rng.randint(2, 4)),
        jobs=p("jobs", rng.randint(30, 60)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.7), 3)),
        spread_s=p("spread_s", round(rng.uniform(0.3, 2.0), 3)),
        tenants=p("tenants", rng.randint(1, 2)),
        workers=p("workers", rng.randint(4, 8)),
        concurrency=p("concurrency", rng.randint(2, 4)),
        lease_wait_ms=p("lease_wait_ms", rng.randint(200, 2000)),
        duration_ms=(0, p("max_duration_ms", rng.randint(5, 60))),
        future_prob=0.0,
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.15), 3)),
        ignore_cancel_prob=0.0,
        fault_s=p("fault_s", round(rng.uniform(3.0, 8.0), 3)),
        limits=concurrency_mix([p("queue_max", rng.randint(1, 2))], 1.0),
        bound_s=120.0,
    )
    faults = FaultPlan(rates={"net.duplicate": p("duplicate", round(rng.uniform(0.0, 0.03), 4))})
    await run_workload(sim, rng, w, faults)

"""Requests and responses get lost, duplicated and reordered; short partitions come and go.

Parameters: request/response loss 2-15% each, duplication 2-10%, reordering 0-5%, a partition
between the node and a random client or worker every 4-15 s lasting 0.3-3 s, lease 2-5 s,
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
        lease_ms=p("lease_ms", rng.randint(2000, 5000)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 3.0), 3)),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(20, 60)),
        batch_prob=p("batch_prob", round(rng.uniform(0.0, 0.3), 3)),
        spread_s=p("spread_s", round(rng.uniform(3.0, 15.0), 3)),
        tenants=p("tenants", rng.randint(1, 4)),
        workers=p("workers", rng.randint(1, 3)),
        concurrency=p("concurrency", rng.randint(1, 6)),
        duration_ms=(0, p("max_duration_ms", rng.randint(200, 3000))),
        fail_prob=p("fail_prob", round(rng.uniform(0.0, 0.2), 3)),
        fault_s=p("fault_s", round(rng.uniform(10.0, 25.0), 3)),
        bound_s=150.0,
    )
    faults = FaultPlan(
        rates={
            "net.drop.request": p("drop_request", round(rng.uniform(0.02, 0.15), 3)),
            "net.drop.response": p("drop_response", round(rng.uniform(0.02, 0.15), 3)),
            "net.duplicate": p("duplicate", round(rng.uniform(0.02, 0.10), 3)),
            "net.reorder": p("reorder", round(rng.uniform(0.0, 0.05), 3)),
        },
        partition_every_s=p("partition_every_s", round(rng.uniform(4.0, 15.0), 3)),
        partition_s=(0.3, p("max_partition_s", round(rng.uniform(0.5, 3.0), 3))),
    )
    await run_workload(sim, rng, w, faults)

"""Most attempts fail (planned failures, handler exceptions, workers crashing mid-task) and are
retried with short backoffs until they succeed or run out of retries.

Parameters: 50-90% of jobs fail 1..retries+1 times, handler exceptions 5-20%, retries 1-5,
backoff 20-300 ms (x2, jittered half the time), a worker crash every 3-10 s, lease 1-2.5 s,
jobs 20-60, workers 2-4.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=p("shards", rng.randint(1, 3)),
        lease_ms=p("lease_ms", rng.randint(1000, 2500)),
        write_latency_ms=p("write_latency_ms", round(rng.uniform(0.2, 3.0), 3)),
        producers=p("producers", rng.randint(1, 3)),
        jobs=p("jobs", rng.randint(20, 60)),
        spread_s=p("spread_s", round(rng.uniform(2.0, 10.0), 3)),
        workers=p("workers", rng.randint(2, 4)),
        concurrency=p("concurrency", rng.randint(1, 6)),
        duration_ms=(0, p("max_duration_ms", rng.randint(100, 1500))),
        retry_count=(1, p("max_retries", rng.randint(1, 5))),
        backoff_ms=(20, p("max_backoff_ms", rng.randint(50, 300))),
        fail_prob=p("fail_prob", round(rng.uniform(0.5, 0.9), 3)),
        error_prob=p("error_prob", round(rng.uniform(0.05, 0.2), 3)),
        fault_s=p("fault_s", round(rng.uniform(8.0, 20.0), 3)),
        bound_s=150.0,
    )
    faults = FaultPlan(
        worker_crash_every_s=p("worker_crash_every_s", round(rng.uniform(3.0, 10.0), 3)),
        worker_restart_s=(0.2, 3.0),
    )
    await run_workload(sim, rng, w, faults)

"""Retry policies from the edges of their valid range: huge retry counts and factors, zero and
tiny intervals; jobs that fail hundreds of times before they succeed.

Parameters: shards 1-2, 2-5 jobs, each with retry_count up to 1000 (retry_count_max), factor 1,
2 or 100 (backoff_factor_max), initial backoff 0-10 ms and max backoff 0-50 ms, failing up to 250
attempts; 1-2 workers with concurrency 1-4, no faults. Every job still ends (SUCCEEDED or
FAILED), and no node meets an item it cannot process (invariant 17).
"""

from __future__ import annotations

import random

from silo.model import RetryPolicy
from sim.simulator import FaultPlan, Simulator
from sim.workload import JobPlan, Workload, make_handler, produce

FACTORS = (1.0, 2.0, 100.0)


def draw_plan(rng: random.Random, n: int) -> JobPlan:
    retries = rng.choice([0, 1, rng.randint(2, 50), rng.randint(200, 1000), 1000])
    initial = rng.choice([0, 1, rng.randint(2, 10)])
    retry = RetryPolicy(
        retry_count=retries, initial_backoff_ms=initial,
        max_backoff_ms=max(initial, rng.choice([0, 1, rng.randint(2, 50)])),
        backoff_factor=rng.choice(FACTORS), randomize=rng.random() < 0.5,
    )
    fails = min(retries + 1, rng.randint(160, 250)) if retries >= 160 else rng.randint(
        0, retries + 1)
    return JobPlan(
        tenant=f"tenant-{rng.randrange(2)}", job_id=f"job-{n:04d}-{rng.getrandbits(32):08x}",
        task_group="tg0", priority=rng.randint(0, 99), delay_ms=0, retry=retry,
        payload={"d": 0, "k": fails},
    )


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload(
        shards=p("shards", rng.randint(1, 2)),
        lease_ms=p("lease_ms", rng.randint(1000, 4000)),
        workers=p("workers", rng.randint(1, 2)),
        concurrency=p("concurrency", rng.randint(1, 4)),
        lease_wait_ms=200,
    )
    plans = [draw_plan(rng, n) for n in range(p("jobs", rng.randint(2, 5)))]
    sim.param("policies", [(x.retry.retry_count, x.retry.backoff_factor,
                            x.retry.initial_backoff_ms, x.retry.max_backoff_ms,
                            x.payload["k"]) for x in plans])
    await sim.add_node("n1", shards=w.shards, lease_ms=w.lease_ms,
                       write_latency_s=w.write_latency_ms / 1000)
    handler = make_handler(sim)
    for i in range(w.workers):
        await sim.add_worker(f"w{i}", "tg0", handler, concurrency=w.concurrency,
                             lease_wait_ms=w.lease_wait_ms)
    done = [0]
    sim.spawn(produce, sim, sim.add_host("p0"), [[x] for x in plans],
              [rng.uniform(0.0, 1.0) for _ in plans], done)
    sim.start_faults(FaultPlan())
    await sim.settle(300.0, lambda: done[0] == 1)
    await sim.heal()
    await sim.settle(60.0, lambda: done[0] == 1)

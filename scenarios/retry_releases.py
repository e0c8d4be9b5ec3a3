"""Failing jobs with retries and backoff on a limited queue: an attempt that fails releases its
slot, the retry waits out its backoff without one (others get the slot meanwhile), then
re-acquires it from scratch.

Parameters: one queue of max 1-2, jobs 12-30 (one tenant), 50-90% failing 1-3 times with 1-3
retries and backoff 300-1500 ms, durations 20-300 ms, 1-3 workers with 1-3 slots, lease 1-3 s,
a worker crash every 4-12 s in half the runs.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, concurrency_mix, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    crashes = rng.random() < 0.5
    w = Workload.draw(
        rng, p, shards=1, lease_ms=Span(1000, 3000), producers=Span(1, 2), jobs=Span(12, 30),
        spread_s=Span(0.5, 4.0), tenants=1, workers=Span(1, 3), concurrency=Span(1, 3),
        max_duration_ms=Span(50, 300), future_prob=0.0, retry_count=(1, 3),
        backoff_ms=(300, 1500), retry_mode="narrow", fail_prob=Span(0.5, 0.9), error_prob=0.05,
        ignore_cancel_prob=0.0, fault_s=Span(5.0, 12.0), bound_s=180.0, limit_mode="none",
        limits=concurrency_mix([p("queue_max", rng.randint(1, 2))], 1.0),
    )
    w.duration_ms = (20, w.duration_ms[1])
    faults = FaultPlan(
        worker_crash_every_s=p("worker_crash_every_s",
                               round(rng.uniform(4.0, 12.0), 3) if crashes else None),
        worker_restart_s=(0.2, 2.0),
    )
    await run_workload(sim, rng, w, faults)

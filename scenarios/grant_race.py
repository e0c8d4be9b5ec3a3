"""Many short jobs on one queue with a max of 1-2 and many workers, so that releases and grants
race: every release regrants in its own batch, and no slot is ever granted twice or past the max.

Parameters: one queue of max 1-2 (per tenant, 1-2 tenants), jobs 30-60 enqueued within 0.3-2 s
(up to 70% in batches), 4-8 workers with 2-4 slots, durations 0-60 ms, lease 1-3 s, 0-15% planned
failures with up to 2 retries (backoff 50-500 ms), message duplication 0-3%.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, concurrency_mix, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(
        rng, p, shards=1, lease_ms=Span(1000, 3000), producers=Span(2, 4), jobs=Span(30, 60),
        batch_prob=Span(0.0, 0.7), spread_s=Span(0.3, 2.0), tenants=Span(1, 2),
        workers=Span(4, 8), concurrency=Span(2, 4), lease_wait_ms=Span(200, 2000),
        max_duration_ms=Span(5, 60), future_prob=0.0, fail_prob=Span(0.0, 0.15),
        ignore_cancel_prob=0.0, fault_s=Span(3.0, 8.0), bound_s=120.0, limit_mode="none",
        limits=concurrency_mix([p("queue_max", rng.randint(1, 2))], 1.0),
    )
    faults = FaultPlan(rates={"net.duplicate": p("duplicate", round(rng.uniform(0.0, 0.03), 4))})
    await run_workload(sim, rng, w, faults)

"""Many jobs with payloads (and results) at their 1 MiB limit, leased by workers with many free
slots: lease replies and report batches fill the 16 MiB message cap and must be split by size.

Parameters: jobs 25-60, most with a payload of exactly payload_max_bytes (at most 40), results
at result_max_bytes half the time, workers 1-2 with 16-40 slots starting 3-8 s after the
producers, no shared limits, enqueues spread over 0-3 s,
lease 2-6 s; message loss (0-5%) in half the runs.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        jobs=Span(25, 60), payload_mode="max", result_mode=rng.choice(["small", "max"]),
        workers=Span(1, 2), concurrency=Span(16, 40), spread_s=Span(0.0, 3.0),
        workers_after_s=Span(3.0, 8.0), limit_mode="none",
        future_prob=0.0, lease_ms=Span(2000, 6000), fault_s=Span(5.0, 15.0), bound_s=150.0,
    )
    drop = p("drop", round(rng.uniform(0.0, 0.05), 4) if rng.random() < 0.5 else 0.0)
    faults = FaultPlan(rates={"net.drop.request": drop, "net.drop.response": drop})
    await run_workload(sim, rng, w, faults)

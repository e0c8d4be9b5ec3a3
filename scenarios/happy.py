"""Many producers and workers, no faults: everything enqueued runs to completion.

Parameters: shards 1-4, producers 1-4, jobs 20-80 (some batched, some scheduled ahead), workers
1-4 with concurrency 1-8, lease 1-5 s, handler durations 0-2 s, a few planned failures.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        shards=Span(1, 4), lease_ms=Span(1000, 5000), producers=Span(1, 4), jobs=Span(20, 80),
        tenants=Span(1, 5), workers=Span(1, 4), concurrency=Span(1, 8), ignore_cancel_prob=0.0,
        fault_s=Span(5.0, 20.0), bound_s=120.0,
    )
    faults = FaultPlan()
    await run_workload(sim, rng, w, faults)

"""Slow, jittery links: long latencies, heavy reordering, calls that time out and are retried.

Parameters: one-way latency from 1-50 ms up to 100-600 ms, reordering 5-30% of messages by an
extra 0.2-2.6 s (past the clients' 2 s call timeout), a slow disk (writes take 0.2-30 ms),
lease 3-6 s, jobs 15-50, workers 1-3.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        lease_ms=Span(3000, 6000), write_latency_ms=Span(0.2, 30.0), jobs=Span(15, 50),
        latency_ms=(p("latency_min_ms", round(rng.uniform(1.0, 50.0), 3)),
                    p("latency_max_ms", round(rng.uniform(100.0, 600.0), 3))),
        reorder_ms=(200.0, p("reorder_max_ms", round(rng.uniform(300.0, 2600.0), 3))),
        fault_s=Span(10.0, 25.0), bound_s=180.0,
    )
    faults = FaultPlan(rates={"net.reorder": p("reorder", round(rng.uniform(0.05, 0.3), 3))})
    await run_workload(sim, rng, w, faults)

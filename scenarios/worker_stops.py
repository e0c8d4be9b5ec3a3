"""Workers stop cleanly, or are killed, and start again while busy: every stop hands back the
tasks a worker prefetched and never started, which the server re-queues without charging an
attempt; a killed worker's prefetched tasks were never delivered (DESIGN §4 "Delivery"), so
their expiry is undelivered, not a ``WORKER_CRASHED`` failure.

Parameters: a clean worker stop every 0.5-2.5 s (running handlers get 0.1-2 s, then are
abandoned; restart after 0.1-1 s), a worker kill every 1-5 s, prefetch 0-8 typical (edges 0,
64, 1000), concurrency 1-3, handlers of 300-1500 ms, jobs 60-150 over 1-4 s, lease 1.5-4 s,
workers 1-3.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(
        rng, p, lease_ms=Span(1500, 4000), jobs=Span(60, 150), spread_s=Span(1.0, 4.0),
        concurrency=Span(1, 3), workers=Span(1, 3), max_duration_ms=Span(300, 1500),
        fault_s=Span(10.0, 20.0), bound_s=180.0,
    )
    faults = FaultPlan(
        worker_stop_every_s=p("worker_stop_every_s", round(rng.uniform(0.5, 2.5), 3)),
        worker_restart_s=(0.1, 1.0),
        worker_crash_every_s=p("worker_crash_every_s", round(rng.uniform(1.0, 5.0), 3)),
    )
    await run_workload(sim, rng, w, faults)

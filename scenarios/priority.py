"""Priorities under pressure: few worker slots, bursts of jobs at many priority levels, future
jobs promoted when due, an operator expediting (and sometimes cancelling) scheduled jobs, clock
jumps in half the runs. A lease must never skip a due task of higher priority.

Parameters: shards 1-2, one task group, 1-2 workers with 1-2 slots, jobs 20-60 in 1-4 bursts,
priorities from 2-10 levels, 0-40% scheduled 0.2-3 s ahead, durations 20-400 ms, lease 1-3 s.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    levels = p("priority_levels", rng.randint(2, 10))
    jumps = rng.random() < 0.5
    w = Workload.draw(
        rng, p, shards=Span(1, 2), lease_ms=Span(1000, 3000), jobs=Span(20, 60),
        batch_prob=Span(0.0, 0.6), spread_s=Span(0.5, 6.0), tenants=Span(1, 3),
        task_groups=1, workers=Span(1, 2), concurrency=Span(1, 2), priority=(0, levels - 1),
        max_duration_ms=Span(50, 400), future_prob=Span(0.0, 0.4), future_ms=(200, 3000),
        start_mode="near", operator_every_s=p("operator_every_s", round(rng.uniform(0.3, 2.0), 3)),
        operator_weights={"expedite": 6, "cancel": 1}, fault_s=Span(5.0, 15.0), bound_s=150.0,
    )
    w.duration_ms = (20, w.duration_ms[1])
    faults = FaultPlan(
        clock_jump_every_s=p("clock_jump_every_s", round(rng.uniform(2.0, 8.0), 3) if jumps
                             else None),
        clock_jump_ms=(-2000, 4000),
    )
    await run_workload(sim, rng, w, faults)

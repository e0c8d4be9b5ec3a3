"""The node crashes mid-load (losing what was not durable) and restarts on the same disk with the
same node id; sometimes it is also stopped and started cleanly. No acknowledged enqueue is lost.

Parameters: a crash every 2-8 s during a 10-25 s fault phase, restart after 0.05-3 s, a clean
restart every 8-30 s in half the runs, disk write latency 1-8 ms (so writes are in flight when the
crash comes), producers 2-4, jobs 30-90, batches up to 50% of enqueues, lease 1-4 s.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        write_latency_ms=Span(1.0, 8.0), producers=Span(2, 4), jobs=Span(30, 90),
        batch_prob=Span(0.0, 0.5), fault_s=Span(10.0, 25.0), bound_s=150.0,
    )
    faults = FaultPlan(
        crash_every_s=p("crash_every_s", round(rng.uniform(2.0, 8.0), 3)),
        clean_restart_every_s=p(
            "clean_restart_every_s", round(rng.uniform(8.0, 30.0), 3) if rng.random() < 0.5
            else None
        ),
        restart_delay_s=(0.05, p("max_restart_delay_s", round(rng.uniform(0.1, 3.0), 3))),
    )
    await run_workload(sim, rng, w, faults)

"""Writes fail with I/O errors (at the disk and at the shard's store); the shard must roll back
its in-memory state, answer UNAVAILABLE, and carry on.

Parameters: disk.write.error 1-10%, shard.write.error 1-10%, write latency 0.2-4 ms, lease 1-4 s,
jobs 20-60, workers 1-3.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        jobs=Span(20, 60), fault_s=Span(10.0, 25.0), bound_s=150.0,
    )
    faults = FaultPlan(rates={
        "disk.write.error": p("disk_write_error", round(rng.uniform(0.01, 0.10), 3)),
        "shard.write.error": p("shard_write_error", round(rng.uniform(0.01, 0.10), 3)),
    })
    await run_workload(sim, rng, w, faults)

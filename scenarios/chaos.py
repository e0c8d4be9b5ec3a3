"""Everything at once: message faults, disk errors, crashes, clean restarts, partitions, clock
jumps, worker crashes, and an operator cancelling, restarting, expediting and deleting jobs.

Parameters: message loss/duplication/reordering 0-5% each, disk and shard write errors 0-3%,
a node crash every 8-25 s and a clean restart every 10-30 s (restart after 0.1-3 s), partitions
every 5-15 s, clock jumps (-3 s..+8 s) every 5-15 s, worker crashes every 5-15 s, an operator
action every 0.2-1 s, lease 1-4 s, jobs 20-60.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


def _rate(p, rng: random.Random, name: str, hi: float) -> float:  # type: ignore[no-untyped-def]
    return float(p(name, round(rng.uniform(0.0, hi), 4)))


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(
        rng, p, lease_ms=Span(1000, 4000), write_latency_ms=Span(0.2, 5.0), jobs=Span(20, 60),
        max_duration_ms=Span(500, 4000), retry_count=(0, p("max_retries", rng.randint(0, 3))),
        fail_prob=Span(0.0, 0.3), ignore_cancel_prob=p("ignore_cancel_prob",
                                                        round(rng.uniform(0.0, 0.3), 3)),
        operator_every_s=p("operator_every_s", round(rng.uniform(0.2, 1.0), 3)),
        fault_s=Span(10.0, 30.0), bound_s=180.0,
    )
    faults = FaultPlan(
        rates={
            "net.drop.request": _rate(p, rng, "drop_request", 0.05),
            "net.drop.response": _rate(p, rng, "drop_response", 0.05),
            "net.duplicate": _rate(p, rng, "duplicate", 0.05),
            "net.reorder": _rate(p, rng, "reorder", 0.05),
            "disk.write.error": _rate(p, rng, "disk_write_error", 0.03),
            "shard.write.error": _rate(p, rng, "shard_write_error", 0.03),
        },
        crash_every_s=p("crash_every_s", round(rng.uniform(8.0, 25.0), 3)),
        clean_restart_every_s=p("clean_restart_every_s", round(rng.uniform(10.0, 30.0), 3)),
        restart_delay_s=(0.1, 3.0),
        partition_every_s=p("partition_every_s", round(rng.uniform(5.0, 15.0), 3)),
        partition_s=(0.3, 4.0),
        clock_jump_every_s=p("clock_jump_every_s", round(rng.uniform(5.0, 15.0), 3)),
        clock_jump_ms=(-3000, 8000),
        worker_crash_every_s=p("worker_crash_every_s", round(rng.uniform(5.0, 15.0), 3)),
    )
    await run_workload(sim, rng, w, faults)

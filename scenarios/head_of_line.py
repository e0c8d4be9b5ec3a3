"""Head of line: one tenant floods a max-1 concurrency queue while another tenant's unlimited
jobs share the task group; the flood's parked requests must not hold the others back (each of
them completes within a few simulated seconds of its enqueue), nor count as due for the priority
checker.

Parameters: jobs 40-70 split between tenant-0 (all on queue "hot", max 1, durations 200-600 ms)
and tenant-1 (no limits, durations 20-300 ms), priorities 0-99 for both, enqueued over 2-5 s,
2-3 workers with 3-4 slots, lease 2-4 s, no faults; bound: 6 s from enqueue to completion.
"""

from __future__ import annotations

import random

from silo.model import ConcurrencyLimit, Limit
from sim.invariants import Invariant
from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload

BOUND_S = 6.0


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param

    def limits(r: random.Random, tenant: str) -> tuple[Limit, ...]:
        return (ConcurrencyLimit("hot", 1),) if tenant == "tenant-0" else ()

    w = Workload.draw(
        rng, p, edges=False, shards=1, lease_ms=Span(2000, 4000), write_latency_ms=Span(0.2, 2.0),
        producers=Span(1, 3), jobs=Span(40, 70), batch_prob=Span(0.0, 0.5),
        spread_s=Span(2.0, 5.0), tenants=2, task_groups=1, workers=Span(2, 3),
        concurrency=Span(3, 4), max_duration_ms=300, future_prob=0.0, fail_prob=0.0,
        error_prob=0.0, ignore_cancel_prob=0.0, fault_s=Span(2.0, 6.0), limits=limits,
        bound_s=120.0,
    )
    w.duration_ms = (20, 300)
    await run_workload(sim, rng, w, FaultPlan(), durations={"tenant-0": (200, 600)})
    if not sim.ok:
        return
    flood = [j for j in sim.checker.jobs.values() if j.tenant == "tenant-0"]
    others = [j for j in sim.checker.jobs.values() if j.tenant == "tenant-1"]
    sim.count("hol.flood_jobs", len(flood))
    sim.count("hol.other_jobs", len(others))
    for j in sorted(others, key=lambda j: j.key):
        took = (j.terminal_at if j.terminal_at is not None else 1e9) - j.enqueued_at
        sim.count("hol.other_max_ms", 0)
        sim.stats["hol.other_max_ms"] = max(sim.stats["hol.other_max_ms"], int(took * 1000))
        if took > BOUND_S:
            sim.checker.fail(Invariant.LIVENESS,
                             f"job {j.key} (no limits) took {took:.2f}s from enqueue to "
                                f"{j.status}, more than {BOUND_S}s: held back by another "
                                f"tenant's parked requests (head of line)",
                             j.describe(), *j.history[-8:])
            return

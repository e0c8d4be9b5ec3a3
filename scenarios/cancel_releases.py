"""An operator cancels (and restarts, expedites, deletes) limited jobs that are parked, ready or
running: a cancel of a queued job releases its slots and drops its request at once, a cancel of
a running one when its worker reports; the freed slots go to the next requests.

Parameters: 1-3 queues of max 1-2, every job limited (1-2 queues, named in a random order), jobs
20-45, 1-2 tenants, durations 200-2500 ms, 0-30% scheduled ahead, 20-40% ignoring cancels, an
operator action every 0.1-0.6 s (mostly cancels), 1-3 workers with 1-4 slots, lease 1-3 s,
message loss 0-2%.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, concurrency_mix, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    nq = p("queues", rng.randint(1, 3))
    maxes = [rng.randint(1, 2) for _ in range(nq)]
    w = Workload.draw(
        rng, p, shards=Span(1, 2), lease_ms=Span(1000, 3000), jobs=Span(20, 45),
        tenants=Span(1, 2), workers=Span(1, 3), concurrency=Span(1, 4),
        max_duration_ms=Span(300, 2500), future_ms=(300, 3000),
        ignore_cancel_prob=p("ignore_cancel_prob", round(rng.uniform(0.2, 0.4), 3)),
        operator_every_s=p("operator_every_s", round(rng.uniform(0.1, 0.6), 3)),
        operator_weights={"cancel": 8, "restart": 2, "expedite": 2, "delete": 1},
        fault_s=Span(5.0, 12.0), bound_s=150.0, limit_mode="none",
        limits=concurrency_mix(maxes, 1.0, max_per_job=2, any_order=True),
    )
    w.duration_ms = (200, w.duration_ms[1])
    faults = FaultPlan(
        rates={"net.drop.response": p("drop_response", round(rng.uniform(0.0, 0.02), 4))},
    )
    await run_workload(sim, rng, w, faults)

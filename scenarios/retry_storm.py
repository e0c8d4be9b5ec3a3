"""Most attempts fail (planned failures, handler exceptions, workers crashing mid-task) and are
retried with short backoffs until they succeed or run out of retries.

Parameters: 50-90% of jobs fail 1..retries+1 times, handler exceptions 5-20%, retries 1-5,
backoff 20-300 ms (x2, jittered half the time), a worker crash every 3-10 s, lease 1-2.5 s,
jobs 20-60, workers 2-4.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        lease_ms=Span(1000, 2500), jobs=Span(20, 60), workers=Span(2, 4),
        retry_count=(1, p("max_retries", rng.randint(1, 5))),
        backoff_ms=(20, p("max_backoff_ms", rng.randint(50, 300))),
        fail_prob=Span(0.5, 0.9), error_prob=p("error_prob", round(rng.uniform(0.05, 0.2), 3)),
        fault_s=Span(8.0, 20.0), bound_s=150.0,
    )
    faults = FaultPlan(
        worker_crash_every_s=p("worker_crash_every_s", round(rng.uniform(3.0, 10.0), 3)),
        worker_restart_s=(0.2, 3.0),
    )
    await run_workload(sim, rng, w, faults)

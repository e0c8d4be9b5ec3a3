"""Rate limits with small budgets: a job that finds no token waits in the timer index until its
reserved token's time and then goes on (no polling); every job completes, and no queued attempt
moves between the timer, request and ready queues more than a few times (a move into the slot a
cancelled job gave back is not counted); no bucket grants more than its limit in a window.

Parameters: 1-3 rate buckets (limit 1-5 per 500-3000 ms), every job on one of them, 0-50% also
on a concurrency queue of max 2 after the rate limit, jobs 10-30 within 0.5-5 s, 1-2 tenants,
durations 0-200 ms, 0-15% planned failures (retries re-acquire), 1-2 workers with 1-4 slots,
clock jumps (-1..+3 s) every 2-8 s in half the runs, an operator every 0.2-1.5 s (mostly cancels,
so tokens are given back from the middle of the reservations).

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

from silo.model import ConcurrencyLimit, Limit, RateLimit
from sim.invariants import Invariant
from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload

MAX_MOVES = 4
"""A queued attempt moves at most: timer (token) -> ready or parked -> ready; a retry is a new
attempt. More means the shard re-places waiting tasks again and again (busy polling)."""


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    nb = p("buckets", rng.randint(1, 3))
    budget = p("budget", [(rng.randint(1, 5), rng.randint(500, 3000)) for _ in range(nb)])
    both = p("with_queue_prob", round(rng.uniform(0.0, 0.5), 3))
    jumps = rng.random() < 0.5

    def limits(r: random.Random, tenant: str) -> tuple[Limit, ...]:
        i = r.randrange(nb)
        out: list[Limit] = [RateLimit("api", f"k{i}", budget[i][0], budget[i][1])]
        if r.random() < both:
            out.append(ConcurrencyLimit("q", 2))
        return tuple(out)

    w = Workload.draw(
        rng, p, shards=Span(1, 2), lease_ms=Span(1000, 3000), producers=Span(1, 2),
        jobs=Span(10, 30), spread_s=Span(0.5, 5.0), tenants=Span(1, 2), workers=Span(1, 2),
        concurrency=Span(1, 4), max_duration_ms=Span(20, 200), future_prob=Span(0.0, 0.2),
        start_mode="near", retry_mode="narrow", fail_prob=Span(0.0, 0.15), backoff_ms=(50, 300),
        fault_s=Span(3.0, 8.0), limit_mode="none", limits=limits,
        operator_every_s=p("operator_every_s", round(rng.uniform(0.2, 1.5), 3)),
        operator_weights={"cancel": 6, "expedite": 2, "restart": 1, "delete": 1},
        bound_s=300.0,
    )
    faults = FaultPlan(
        clock_jump_every_s=p("clock_jump_every_s", round(rng.uniform(2.0, 8.0), 3) if jumps
                             else None),
        clock_jump_ms=(-1000, 3000),
    )
    await run_workload(sim, rng, w, faults)
    worst = max(sim.checker.moves.items(), key=lambda kv: kv[1], default=None)
    if worst is not None and worst[1] > MAX_MOVES:
        (key, attempt), n = worst
        sim.checker.fail(Invariant.LIVENESS,
                         f"attempt {attempt} of job {key} moved between queues {n} times "
                            f"while waiting (more than {MAX_MOVES}): busy polling",
                         sim.checker.jobs[key].describe(), *sim.checker.jobs[key].history[-8:])

"""Floating concurrency limits: the max of each queue is refreshed by workers while the queue has
work; the refresh handler sometimes fails, raises, or sleeps past its lease (so the refresh lease
expires and is reaped), and workers crash. A queue never grants past its max of the moment, and
every job still completes.

Parameters: 1-3 floating queues (default max 1-3, refresh every 200-2000 ms), 80-100% of jobs on
one of them, jobs 15-40, 1-2 tenants, refresh answers 1-4 (60-85%), else a failure, an exception,
an out-of-range value, or a sleep of lease + 0.5-2 s; a worker crash every 3-10 s, workers 1-3
with 1-4 slots, lease 1-3 s, durations 0-500 ms.

Every other knob is drawn by ``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random
from typing import Any

import trio

from silo.client.types import Fail
from silo.model import FloatingConcurrencyLimit, Limit
from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    nq = p("queues", rng.randint(1, 3))
    defaults = p("default_max", [rng.randint(1, 3) for _ in range(nq)])
    intervals = p("refresh_interval_ms", [rng.randint(200, 2000) for _ in range(nq)])
    limited = p("limited_prob", round(rng.uniform(0.8, 1.0), 3))
    ok_prob = p("refresh_ok_prob", round(rng.uniform(0.6, 0.85), 3))
    lease_ms = p("lease_ms", rng.randint(1000, 3000))
    refresh_rng = sim.random.stream("refresh")

    def limits(r: random.Random, tenant: str) -> tuple[Limit, ...]:
        if r.random() >= limited:
            return ()
        i = r.randrange(nq)
        return (FloatingConcurrencyLimit(f"f{i}", defaults[i], intervals[i], {"i": str(i)}),)

    async def refresh(ctx: Any) -> Any:
        x = refresh_rng.random()
        sim.count("refresh.called")
        if x < ok_prob:
            return refresh_rng.randint(1, 4)
        x = refresh_rng.randrange(4)
        if x == 0:
            raise Fail("REFRESH_PLANNED", {"queue": ctx.queue})
        if x == 1:
            raise RuntimeError("planned refresh handler crash")
        if x == 2:
            return -1
        await trio.sleep(lease_ms / 1000 + refresh_rng.uniform(0.5, 2.0))
        return refresh_rng.randint(1, 4)

    w = Workload.draw(
        rng, p, shards=Span(1, 2), lease_ms=lease_ms, jobs=Span(15, 40), tenants=Span(1, 2),
        workers=Span(1, 3), concurrency=Span(1, 4), max_duration_ms=Span(100, 500),
        future_prob=Span(0.0, 0.2), fail_prob=Span(0.0, 0.15), fault_s=Span(6.0, 15.0),
        limit_mode="none", limits=limits, refresh_handler=refresh, bound_s=180.0,
    )
    faults = FaultPlan(
        worker_crash_every_s=p("worker_crash_every_s", round(rng.uniform(3.0, 10.0), 3)),
        worker_restart_s=(0.2, 3.0),
    )
    await run_workload(sim, rng, w, faults)

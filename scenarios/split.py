"""Shards split under load, with the node crashed right after a seed-chosen split phase (or
mid-cleanup); invariant 11 and every other invariant hold, and reopening finishes a committed
split or undoes an uncommitted one.

Parameters: 1-3 splits during a 12-25 s fault phase, the first after 1-6 s; the crash point
(one of ``sim.splits.CRASH_POINTS``); split points at the median tenant hash in 70% of the
requests, else a random hash in the range; 1-2 shards, 4-12 tenants, single jobs per enqueue
(a batch spanning both children of a split is refused until the client refreshes its map);
sometimes random crashes too.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.splits import CRASH_POINTS, split_operator
from sim.workload import Span, Workload, run_workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    w = Workload.draw(rng, p,
        shards=Span(1, 2), tenants=Span(4, 12), jobs=Span(30, 80), batch_prob=0.0,
        fault_s=Span(12.0, 25.0), bound_s=150.0,
    )
    crash_at = p("split_crash_at", rng.choice(CRASH_POINTS))
    splits = p("splits", rng.randint(1, 3))
    faults = FaultPlan(
        crash_every_s=p("crash_every_s", round(rng.uniform(6.0, 15.0), 3)
                        if rng.random() < 0.3 else None),
        restart_delay_s=(0.05, 1.5),
    )
    sim.spawn_fault_phase(split_operator, sim, sim.random.stream("splitter"), splits, crash_at,
                          0.7, (1.0, 6.0))
    await run_workload(sim, rng, w, faults)

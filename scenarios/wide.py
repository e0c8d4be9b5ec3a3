"""The whole input space: every knob of ``Workload.draw`` at a typical or an edge value (a few
extreme per run), dishonest actors chosen by the seed, and a fault mix drawn the same way.

Parameters: everything ``Workload.draw`` draws; each fault family (message loss and duplication,
disk and shard write errors, crashes, clean restarts, partitions, clock jumps, worker crashes, an
operator) switched on with probability 0.3.
"""

from __future__ import annotations

import random

from sim.simulator import FaultPlan, Simulator
from sim.workload import Span, Workload, run_workload

FAMILY_PROB = 0.3


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param

    def on(name: str, value: float) -> float | None:
        return p(name, value if rng.random() < FAMILY_PROB else None)

    w = Workload.draw(
        rng, p, fault_s=Span(5.0, 25.0), bound_s=240.0,
        operator_every_s=on("operator_every_s", round(rng.uniform(0.2, 2.0), 3)),
    )
    drop = on("drop", round(rng.uniform(0.0, 0.08), 4)) or 0.0
    disk = on("write_errors", round(rng.uniform(0.0, 0.05), 4)) or 0.0
    faults = FaultPlan(
        rates={"net.drop.request": drop, "net.drop.response": drop, "net.duplicate": drop,
               "net.reorder": drop, "disk.write.error": disk, "shard.write.error": disk},
        crash_every_s=on("crash_every_s", round(rng.uniform(3.0, 20.0), 3)),
        clean_restart_every_s=on("clean_restart_every_s", round(rng.uniform(5.0, 25.0), 3)),
        partition_every_s=on("partition_every_s", round(rng.uniform(3.0, 15.0), 3)),
        clock_jump_every_s=on("clock_jump_every_s", round(rng.uniform(3.0, 15.0), 3)),
        worker_crash_every_s=on("worker_crash_every_s", round(rng.uniform(3.0, 15.0), 3)),
    )
    await run_workload(sim, rng, w, faults)

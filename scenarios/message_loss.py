"""Requests and responses get lost, duplicated and reordered; short partitions come and go.

Parameters: request/response loss 2-15% each, duplication 2-10%, reordering 0-5%, a partition
between the node and a random client or worker every 4-15 s lasting 0.3-3 s, lease 2-5 s,
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
        lease_ms=Span(2000, 5000), jobs=Span(20, 60), fault_s=Span(10.0, 25.0), bound_s=150.0,
    )
    faults = FaultPlan(
        rates={
            "net.drop.request": p("drop_request", round(rng.uniform(0.02, 0.15), 3)),
            "net.drop.response": p("drop_response", round(rng.uniform(0.02, 0.15), 3)),
            "net.duplicate": p("duplicate", round(rng.uniform(0.02, 0.10), 3)),
            "net.reorder": p("reorder", round(rng.uniform(0.0, 0.05), 3)),
        },
        partition_every_s=p("partition_every_s", round(rng.uniform(4.0, 15.0), 3)),
        partition_s=(0.3, p("max_partition_s", round(rng.uniform(0.5, 3.0), 3))),
    )
    await run_workload(sim, rng, w, faults)

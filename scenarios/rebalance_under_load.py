"""Nodes join, leave gracefully and come back, and are decommissioned under job traffic; shards
move by close, release, acquire, open between real nodes over one shared data root.

Runs the standard workload (producers, workers routing across the nodes, an operator, every
checker) on a cluster of real nodes with coordination etcd (sim/cluster_nodes.py). Invariant
10 is checked on every store open and every release of an ownership key; after healing every
shard must be served again and every job terminal.

Parameters: 2-3 nodes at the start, 4-10 shards, membership TTL 1-3 s, reconcile interval
0.3-1 s, workers rediscovering the nodes every 0.5-3 s, a cluster move every 1.5-5 s during a
10-20 s fault phase (a join, at most two; a graceful leave and a return after 0.5-4 s; in half
the runs one decommission, whose shards the operator force-releases), message loss 0-1%,
lease 1-5 s, jobs 20-60, worker concurrency 2-8 and narrow retry policies (a worker runs one
lease loop per node, and each holds a slot while it long-polls: with one slot and several nodes
a job's attempts wait for the slot's turn, too slow for the 1,000 attempts of a poison job).

The job traffic is ``sim.cluster_workload.TRAFFIC`` where not said otherwise; every other knob
(the workers' long poll among them, up to its 30 s edge) is drawn by ``Workload.draw`` (typical,
or at an edge).
"""

from __future__ import annotations

import random

import trio

from sim.cluster_nodes import ClusterWorld
from sim.cluster_workload import (
    Moves,
    draw_cluster,
    draw_message_loss,
    draw_traffic,
    run_cluster_workload,
)
from sim.simulator import Simulator


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    knobs = draw_cluster(rng, p, nodes=(2, 3))
    w = draw_traffic(rng, p)
    every_s = p("move_every_s", round(rng.uniform(1.5, 5.0), 3))
    decommission = p("decommission", rng.random() < 0.5)
    faults = draw_message_loss(rng, p)

    async def driver(sim: Simulator, world: ClusterWorld, rng: random.Random) -> None:
        moves = Moves(sim, world, rng)
        decommissioned = False
        while True:
            await trio.sleep(rng.uniform(0.5, 2 * every_s))
            up = moves.up()
            roll = rng.random()
            if moves.joined < 2 and (roll < 0.35 or len(up) < 2):
                await moves.join()
            elif decommission and not decommissioned and len(up) > 2 and roll < 0.5:
                decommissioned = True
                await moves.decommission(rng.choice(up))
            elif len(up) > 1:
                await moves.leave_and_return(rng.choice(up), rng.uniform(0.5, 4.0))

    await run_cluster_workload(sim, rng, w, faults, knobs, driver)

"""cluster_membership with real nodes, real shards and job traffic: nodes join, crash and
restart with the same id (losing only their own unsynced writes), leave and come back, and are
cut off from etcd, while producers, workers and an operator keep working across them.

Runs the standard workload on a cluster of real nodes with coordination etcd over one shared
data root (sim/cluster_nodes.py); every invariant is checked, invariant 10 on every store open
and key release; after healing every shard must be served and every job terminal.

Parameters: 2-3 nodes at the start, 1-2 joining (at least one), 4-10 shards, membership TTL
1-3 s, reconcile interval 0.3-1 s, workers rediscovering the nodes every 0.5-3 s, a cluster
fault every 1-4 s during a 10-20 s fault phase (a crash with a restart after 0.2-4 s, a graceful
leave and a return after 0.2-4 s, a partition from etcd for 0.5-5 s, or a join), message loss
0-1%, lease 1-5 s, jobs 20-60, worker concurrency 2-8, narrow retry policies.

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
    joins = p("joins", rng.randint(1, 2))
    every_s = p("fault_every_s", round(rng.uniform(1.0, 4.0), 3))
    faults = draw_message_loss(rng, p)

    async def driver(sim: Simulator, world: ClusterWorld, rng: random.Random) -> None:
        moves = Moves(sim, world, rng)
        while True:
            await trio.sleep(rng.uniform(0.5, 2 * every_s))
            up = moves.up()
            roll = rng.random()
            if moves.joined < joins and (roll < 0.25 or len(up) < 2):
                await moves.join()
            elif not up:
                continue
            elif roll < 0.55:
                moves.crash(rng.choice(up), rng.uniform(0.2, 4.0))
            elif roll < 0.7:
                await moves.leave_and_return(rng.choice(up), rng.uniform(0.2, 4.0))
            else:
                node = rng.choice(up)
                cut = moves.cut_off(node, peers=False, clients=False)
                sim.spawn(_reconnect_later, moves, node, cut, rng.uniform(0.5, 5.0))

    await run_cluster_workload(sim, rng, w, faults, knobs, driver)


async def _reconnect_later(moves: Moves, node, cut: list[str], delay: float) -> None:  # type: ignore[no-untyped-def]
    await trio.sleep(delay)
    moves.reconnect(node, cut)

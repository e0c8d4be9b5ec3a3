"""Shards keep moving between real nodes while producers, the operator and workers hold the
maps they read long ago: calls go to former owners and must follow the "shard not found" owner
hints (or refresh the map, or retry UNAVAILABLE) to the node that serves the shard now.

Runs the standard workload on a cluster of real nodes with coordination etcd
(sim/cluster_nodes.py); workers rediscover the nodes only every 8-20 s, so their lease loops,
heartbeats and reports work from a stale view for most of the run. A spare node joins and
leaves gracefully again and again (each time some shards move to it and back).

Parameters: 2 nodes at the start plus 1-2 spares, 4-10 shards, membership TTL 1-3 s, reconcile
interval 0.3-1 s, a spare joining or leaving every 1-4 s during a 10-20 s fault phase, message
loss 0-1%, lease 1-5 s, jobs 20-60, worker concurrency 2-8, narrow retry policies.

In a third of the runs the workers are narrow (1-2 slots, no prefetch, 30 s long polls): fewer
lease credits than nodes, the shape in which one node's long poll could keep every credit from
the node with the work (mutation ``hoard-slots-across-nodes``). Every other knob is drawn by
``Workload.draw`` (typical, or at an edge).
"""

from __future__ import annotations

import random

import trio

from sim.cluster_nodes import ClusterNodeHost, ClusterWorld
from sim.cluster_workload import (
    Moves,
    draw_cluster,
    draw_message_loss,
    draw_traffic,
    run_cluster_workload,
)
from sim.simulator import Simulator
from sim.workload import Span


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    knobs = draw_cluster(rng, p, nodes=(2, 2), discover_s=round(rng.uniform(8.0, 20.0), 3))
    narrow = p("narrow_workers", rng.random() < 1 / 3)
    changes: dict[str, object] = {}
    if narrow:
        changes = {"lease_wait_ms": 30_000, "prefetch": 0, "concurrency": Span(1, 2)}
    w = draw_traffic(rng, p, **changes)
    spares = p("spares", rng.randint(1, 2))
    every_s = p("move_every_s", round(rng.uniform(1.0, 4.0), 3))
    faults = draw_message_loss(rng, p)

    async def driver(sim: Simulator, world: ClusterWorld, rng: random.Random) -> None:
        moves = Moves(sim, world, rng)
        spare: list[ClusterNodeHost] = []
        while True:
            await trio.sleep(rng.uniform(0.5, 2 * every_s))
            down = [n for n in spare if not n.serving]
            up = [n for n in spare if n.serving]
            if len(spare) < spares:
                spare.append(await moves.join())
            elif down and (not up or rng.random() < 0.5):
                node = rng.choice(down)
                sim.count("cluster.rejoin")
                await node.start()
            elif up:
                node = rng.choice(up)
                sim.count("cluster.leave")
                node.begin_stop()
                sim.spawn(node.stop)

    await run_cluster_workload(sim, rng, w, faults, knobs, driver)

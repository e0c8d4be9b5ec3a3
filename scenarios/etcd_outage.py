"""etcd becomes unreachable for a while (every call refused, or the host down) under job
traffic: nodes whose keepalive fails stop serving (fail closed) and recover once it is back.

Runs the standard workload on a cluster of real nodes with coordination etcd
(sim/cluster_nodes.py). Checked besides every invariant: no node still considers its membership
alive once an outage has lasted its membership TTL (no renewal can have been confirmed), and
every shard is served again within a bound after each outage.

Parameters: 2-3 nodes, 4-10 shards, membership TTL 1-3 s, reconcile interval 0.3-1 s, workers
rediscovering the nodes every 0.5-3 s, 1-3 outages during a 10-20 s fault phase (1-5 s apart,
each 0.3-8 s long; etcd answering UNAVAILABLE "no leader", or down), message loss 0-1%, lease
1-5 s, jobs 20-60, worker concurrency 2-8, narrow retry policies.

The job traffic is ``sim.cluster_workload.TRAFFIC`` where not said otherwise; every other knob
(the workers' long poll among them, up to its 30 s edge) is drawn by ``Workload.draw`` (typical,
or at an edge).
"""

from __future__ import annotations

import random

import trio

from sim.cluster_nodes import ClusterWorld
from sim.cluster_workload import (
    draw_cluster,
    draw_message_loss,
    draw_traffic,
    run_cluster_workload,
    wait_served,
)
from sim.invariants import Invariant
from sim.simulator import Simulator

RECOVER_BOUND_S = 30.0


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    knobs = draw_cluster(rng, p, nodes=(2, 3))
    w = draw_traffic(rng, p)
    outages = p("outages", rng.randint(1, 3))
    faults = draw_message_loss(rng, p)

    async def driver(sim: Simulator, world: ClusterWorld, rng: random.Random) -> None:
        etcd = world.etcd
        for _ in range(outages):
            await trio.sleep(rng.uniform(1.0, 5.0))
            length = rng.uniform(0.3, 8.0)
            down = rng.random() < 0.5
            sim.count("cluster.etcd_outage")
            sim.board.count("etcd.unavailable", f"{'down' if down else 'no leader'} "
                                                f"{length:.3f}s")
            start = trio.current_time()
            if down:
                etcd.crash()
            else:
                etcd.set_unavailable(True)
            with trio.move_on_after(length):
                await trio.sleep(world.ttl_s + 0.05)
                for node in world.nodes():
                    if node.alive:
                        sim.checker.fail(
                            Invariant.SINGLE_OWNER,
                            f"{node.name} still considers its membership alive "
                            f"{trio.current_time() - start:.2f}s into an etcd outage (TTL "
                            f"{world.ttl_s}s): it serves shards {sorted(node.open)} with no "
                            f"renewal confirmed")
                        return
                sim.count("cluster.fail_closed_checked")
                await trio.sleep_forever()
            if down:
                await etcd.start()
            else:
                etcd.set_unavailable(False)
            sim.trace.record("cluster etcd back")
            await wait_served(sim, world, RECOVER_BOUND_S, "after an etcd outage")

    await run_cluster_workload(sim, rng, w, faults, knobs, driver)

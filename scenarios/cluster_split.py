"""Shards split under load on a cluster of real nodes: the owner of a shard splits it (the map
CAS in etcd is the commit point, which also takes both children's ownership keys), with the
node crashed right after a seed-chosen split phase (or mid-cleanup); the children may move to
other nodes afterwards. Invariant 11, invariant 10 and every other invariant hold.

Runs the standard workload on a cluster of real nodes with coordination etcd over one shared
data root (sim/cluster_nodes.py); the split request goes straight to the shard's owner.

Parameters: 2-3 nodes, 2-4 shards, membership TTL 1-3 s, reconcile interval 0.3-1 s, workers
rediscovering the nodes every 0.5-3 s, 1-3 splits during a 10-20 s fault phase, the first after
1-6 s; the crash point (one of ``sim.splits.CRASH_POINTS``); split points at the median tenant
hash in 70% of the requests, else a random hash in the range; 4-12 tenants, single jobs per
enqueue; in half the runs a node joins during the fault phase.

The job traffic is ``sim.cluster_workload.TRAFFIC`` where not said otherwise; every other knob
(the workers' long poll among them, up to its 30 s edge) is drawn by ``Workload.draw`` (typical,
or at an edge).
"""

from __future__ import annotations

import random

import trio

from silo.errors import SiloError
from silo.rpc import RpcError
from silo.wire import pb
from sim.cluster_nodes import ClusterWorld
from sim.cluster_workload import Moves, draw_cluster, run_cluster_workload, workload_overrides
from sim.simulator import FaultPlan, Simulator
from sim.splits import CRASH_POINTS, arm_crash, tune_cleanup
from sim.workload import Span, Workload


async def run(sim: Simulator, rng: random.Random) -> None:
    p = sim.param
    knobs = draw_cluster(rng, p, nodes=(2, 3))
    w = Workload.draw(
        rng, p, shards=Span(2, 4), tenants=Span(4, 12), jobs=Span(30, 80), batch_prob=0.0,
        workers=Span(1, 4), concurrency=Span(2, 8), retry_mode="narrow",
        fault_s=Span(10.0, 20.0), bound_s=150.0, **workload_overrides(),
    )
    crash_at = p("split_crash_at", rng.choice(CRASH_POINTS))
    splits = p("splits", rng.randint(1, 3))
    join = p("join", rng.random() < 0.5)
    faults = FaultPlan()

    async def driver(sim: Simulator, world: ClusterWorld, rng: random.Random) -> None:
        moves = Moves(sim, world, rng)
        client = sim.add_host("splitter").client()
        fired: list[bool] = []
        for i in range(splits):
            await trio.sleep(rng.uniform(1.0, 6.0))
            if join and i == 1:
                await moves.join()
            owners = moves.owners()
            if not owners:
                continue
            host = rng.choice(owners)
            assert host.node is not None
            shard = rng.choice(sorted(host.open))
            rng_ = host.node.shard_map.get(shard)
            if rng_ is None:
                continue
            tune_cleanup(host, rng.choice((3, 10, 50)), rng.choice((0.0, 0.01, 0.05)))
            arm_crash(sim, host, crash_at, rng, fired)
            at_hash = 0 if rng.random() < 0.7 else rng.randrange(rng_.start + 1, rng_.end)
            sim.trace.record(f"split request {host.name} shard={shard} at_hash={at_hash}")
            try:
                await client.call_address(
                    host.address, "SplitShard", pb.SplitShardRequest(shard=shard,
                                                                     at_hash=at_hash),
                    pb.SplitShardResponse, timeout=30.0)
                sim.count("split.done")
            except (SiloError, RpcError) as exc:
                sim.count(f"split.refused.{exc.code.name}")

    await run_cluster_workload(sim, rng, w, faults, knobs, driver)

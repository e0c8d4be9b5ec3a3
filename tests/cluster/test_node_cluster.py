"""A clustered :class:`~silo.node.SiloNode` (real shards on a shared in-memory disk, the real
reconcile loop, the etcd model or a real etcd): what a node answers for shards it does not
serve, cluster info, and force-release."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from silo.errors import FailedPrecondition, NotFound, Unavailable
from silo.node import SHARD_OWNER_METADATA, ClusterSettings, NodeConfig, SiloNode, open_node
from silo.runtime import RandomSource, Runtime
from silo.runtime.faults import Faults
from silo.service import SiloService
from silo.wire import pb
from sim.clock import SimClock
from sim.disk import MemoryDisk
from tests.cluster.conftest import EtcdEnv

SHARDS = 4
SETTINGS = ClusterSettings(membership_ttl_s=1, reconcile_interval_s=0.1)


@asynccontextmanager
async def member(env: EtcdEnv, disk: MemoryDisk, name: str, port: int
                 ) -> AsyncIterator[SiloNode]:
    runtime = Runtime(clock=SimClock(), random=RandomSource(port), disk=disk, node_id=name)
    config = NodeConfig(data_dir="root", shards=SHARDS, node_id=name,
                        advertise_address=f"127.0.0.1:{port}")
    async with open_node(runtime, config, await env.coordinator(name), SETTINGS) as node:
        with pytest.raises(Unavailable, match="not a live cluster member"):
            node.shard(0)
        await node.join_cluster()
        yield node


async def settled(nodes: list[SiloNode]) -> None:
    with trio.fail_after(20):
        while sum(len(n.shards) for n in nodes) != SHARDS or any(
                n.view is None or len(n.view.owners) != SHARDS for n in nodes):
            await trio.sleep(0.05)
        await trio.sleep(0.5)


async def test_not_found_with_the_owner_then_unavailable_then_force_release(
        env: EtcdEnv, clock) -> None:
    disk = MemoryDisk(random.Random(1), Faults(random.Random(1)))
    async with member(env, disk, "a", 7001) as a:
        svc = SiloService(a)
        async with member(env, disk, "b", 7002) as b:
            await settled([a, b])
            assert a.shards and b.shards
            theirs = min(b.shards)
            with pytest.raises(NotFound, match="shard not found") as caught:
                a.shard(theirs)
            assert caught.value.metadata[SHARD_OWNER_METADATA] == "127.0.0.1:7002"
            info = await svc.get_cluster_info(pb.GetClusterInfoRequest())
            assert info.coordination == "etcd"
            assert {n.node_id: sorted(n.shards) for n in info.nodes} == {
                "a": sorted(a.shards), "b": sorted(b.shards)}
            assert {s.id: s.owner_address for s in info.shards}[theirs] == "127.0.0.1:7002"
            with pytest.raises(FailedPrecondition, match="a live member"):
                await svc.force_release_shard(pb.ForceReleaseShardRequest(shard=theirs))
            held_by_b = sorted(b.shards)
        # b left (ownership keys stay): its shards wait for it.
        with trio.fail_after(10):
            while a.view is None or "b" in a.view.members:
                await trio.sleep(0.05)
        with pytest.raises(Unavailable, match="owned by b, which is not a live member"):
            a.shard(theirs)
        assert sorted(a.shards) == sorted(set(range(SHARDS)) - set(held_by_b))
        with pytest.raises(FailedPrecondition, match="not c"):
            await svc.force_release_shard(pb.ForceReleaseShardRequest(shard=theirs, owner="c"))
        for shard in held_by_b:
            resp = await svc.force_release_shard(
                pb.ForceReleaseShardRequest(shard=shard, owner="b"))
            assert resp.released and resp.previous_owner == "b"
        with trio.fail_after(10):
            while len(a.shards) != SHARDS:
                await trio.sleep(0.05)
        assert a.shard(theirs).shard_id == theirs
        with pytest.raises(NotFound, match="not in the shard map"):
            await svc.force_release_shard(pb.ForceReleaseShardRequest(shard=99))

"""Splits on clustered nodes (real shards on a shared in-memory disk, the real reconcile loop,
the etcd model or a real etcd): only the parent's owner splits; the commit takes both
children's keys; the parent's key is released; a crash before the commit is undone by the
parent's next owner, one after it finished by whoever opens the children."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import trio

from silo.cluster.split import SplitPhase
from silo.errors import NotFound
from silo.node import SHARD_OWNER_METADATA, SiloNode
from silo.runtime.faults import Faults
from silo.service import SiloService
from silo.wire import pb
from sim.disk import MemoryDisk
from tests.cluster.conftest import EtcdEnv
from tests.cluster.test_node_cluster import SHARDS, member, settled
from tests.shard.support import GROUP, new_job

TENANTS = [f"tenant-{i}" for i in range(16)]


def _disk() -> MemoryDisk:
    return MemoryDisk(random.Random(1), Faults(random.Random(1)))


async def _fill(node: SiloNode, shard_id: int) -> dict[str, str]:
    """Jobs in every tenant that ``shard_id`` (served by ``node``) holds: job id -> tenant."""
    jobs = {}
    for i in range(200):
        t = f"t{i}"
        if node.shard_map.shard_for_tenant(t).shard_id == shard_id:
            jobs[await node.shard(shard_id).enqueue(new_job(f"{t}-j", tenant=t))] = t
        if len(jobs) >= 12:
            break
    assert len(jobs) >= 4
    return jobs


async def _until(cond, what: str, timeout: float = 20) -> None:  # noqa: ANN001
    with trio.fail_after(timeout):
        while not await cond():
            await trio.sleep(0.05)


async def _jobs_readable(nodes: list[SiloNode], jobs: dict[str, str]) -> None:
    for job_id, tenant in jobs.items():
        holder = None
        for n in nodes:
            sid = n.shard_map.shard_for_tenant(tenant).shard_id
            if sid in n.shards:
                holder = n.shards[sid]
        assert holder is not None, (job_id, tenant)
        view = await holder.get_job(tenant, job_id)
        assert view is not None, (job_id, tenant)


async def test_the_owner_splits_and_the_children_become_ordinary_shards(
        env: EtcdEnv, clock) -> None:
    disk = _disk()
    async with member(env, disk, "a", 7101) as a, member(env, disk, "b", 7102) as b:
        await settled([a, b])
        parent = min(a.shards)
        jobs = await _fill(a, parent)
        with pytest.raises(NotFound, match="shard not found") as caught:
            await SiloService(b).split_shard(pb.SplitShardRequest(shard=parent))
        assert caught.value.metadata[SHARD_OWNER_METADATA] == "127.0.0.1:7101"
        resp = await SiloService(a).split_shard(pb.SplitShardRequest(shard=parent))
        assert resp.split.phase == "children_open"
        left, right = (c.shard for c in resp.split.children)
        coord = a.reconciler.coordinator
        owners = await coord.owners()
        assert parent not in owners
        assert owners[left] == owners[right] == "a"
        assert (await coord.read_shard_map()).map.get(parent) is None

        async def done() -> bool:
            s = await SiloService(b).get_split_status(pb.GetSplitStatusRequest(shard=parent))
            return s.splits[0].phase == "cleanup_done"

        await _until(done, "cleanup done")
        await _until(lambda: _all_served([a, b], SHARDS + 1), "every shard served")
        await _jobs_readable([a, b], jobs)
        assert not await disk.exists(a.shard_path(parent))
        await _lease_requests_for_the_parent_find_the_holder([a, b], parent, (left, right))


async def _lease_requests_for_the_parent_find_the_holder(
        nodes: list[SiloNode], parent: int, children: tuple[int, int]) -> None:
    """A heartbeat or report naming the old parent id (it names no tenant) is answered by the
    child holding the lease, or sent on to a child served elsewhere (owner hint)."""
    for child in children:
        holder = next(n for n in nodes if child in n.shards)
        leased = await holder.shards[child].lease_tasks("w", GROUP, 1)
        assert leased, child
        task_id = leased[0].task_id
        for n in nodes:
            await n.splitter.refresh_lineage()
            if n is holder:
                assert n.shard_for_task(parent, task_id).shard_id == child
            else:
                with pytest.raises(NotFound, match="shard not found") as caught:
                    n.shard_for_task(parent, task_id)
                assert caught.value.metadata[SHARD_OWNER_METADATA] == holder.advertise_address


async def _all_served(nodes: list[SiloNode], count: int) -> bool:
    return sum(len(n.shards) for n in nodes) == count and all(
        n.view is not None and len(n.view.owners) == count for n in nodes)


async def test_a_crash_before_the_commit_is_undone_by_the_parents_next_owner(
        env: EtcdEnv, clock) -> None:
    disk = _disk()
    async with member(env, disk, "b", 7202) as b:
        async with member(env, disk, "a", 7201) as a:
            await settled([a, b])
            parent = min(a.shards)
            jobs = await _fill(a, parent)
            stuck = trio.Event()

            async def hang(record) -> None:  # noqa: ANN001
                if record.phase == SplitPhase.CLONED:
                    stuck.set()
                    await trio.sleep_forever()

            a.splitter.on_phase = hang
            async with trio.open_nursery() as nursery:
                nursery.start_soon(SiloService(a).split_shard, pb.SplitShardRequest(shard=parent))
                await stuck.wait()
                nursery.cancel_scope.cancel()  # the node "dies" with the split at CLONED
        coord = b.reconciler.coordinator
        record = (await b.splitter.coordination.records())[parent]
        assert record.phase == SplitPhase.CLONED
        # a is gone for good: the operator releases its shards; b takes them.
        for shard, owner in (await coord.owners()).items():
            if owner == "a":
                assert await coord.force_release(shard, "a")
        await _until(lambda: _all_served([b], SHARDS), "b serves every shard")
        record = (await b.splitter.coordination.records())[parent]
        assert record.phase == SplitPhase.ABORTED and "next owner" in record.reason
        for child in record.children:
            assert not await disk.exists(b.shard_path(child.shard_id))
        await _jobs_readable([b], jobs)


async def test_a_crash_after_the_commit_is_finished_when_the_children_open(
        env: EtcdEnv, clock) -> None:
    disk = _disk()
    async with member(env, disk, "b", 7302) as b:
        async with member(env, disk, "a", 7301) as a:
            await settled([a, b])
            parent = min(a.shards)
            jobs = await _fill(a, parent)
            stuck = trio.Event()

            async def hang(record) -> None:  # noqa: ANN001
                if record.phase == SplitPhase.COMMITTED:
                    stuck.set()
                    await trio.sleep_forever()

            a.splitter.on_phase = hang
            async with trio.open_nursery() as nursery:
                nursery.start_soon(SiloService(a).split_shard, pb.SplitShardRequest(shard=parent))
                await stuck.wait()
                nursery.cancel_scope.cancel()
        coord = b.reconciler.coordinator
        owners = await coord.owners()
        record = (await b.splitter.coordination.records())[parent]
        assert record.phase == SplitPhase.COMMITTED
        assert owners[record.left] == owners[record.right] == owners[parent] == "a"
        for shard, owner in owners.items():
            if owner == "a":
                assert await coord.force_release(shard, "a")
        await _until(lambda: _all_served([b], SHARDS + 1), "b serves every shard")

        async def done() -> bool:
            r = (await b.splitter.coordination.records())[parent]
            return r.phase == SplitPhase.CLEANUP_DONE

        await _until(done, "cleanup done")
        assert not await disk.exists(b.shard_path(parent))
        await _jobs_readable([b], jobs)


async def test_a_child_split_before_its_cleanup_ends_lets_the_first_split_finish(
        env: EtcdEnv, clock) -> None:
    """A child split again while it still sweeps rows outside its range: its own children's
    sweeps cover that (their ranges lie inside it), so once the second split's cleanup is done
    the first split's record says its cleanup is done too, and the retired child never
    opens again."""
    disk = _disk()
    async with member(env, disk, "a", 7131) as a:
        await settled([a])
        parent = min(a.shards)
        await _fill(a, parent)
        slow = replace(a.config.shard, cleanup_batch_keys=2, cleanup_pause_s=0.05)
        a.config = replace(a.config, shard=slow)
        first = await SiloService(a).split_shard(pb.SplitShardRequest(shard=parent))
        left = first.split.children[0].shard
        marker = a.shards[left].split_marker()
        assert marker is not None and not marker.done
        await SiloService(a).split_shard(pb.SplitShardRequest(shard=left))
        a.config = replace(a.config, shard=replace(slow, cleanup_pause_s=0.0))

        async def done(shard: int) -> bool:
            s = await SiloService(a).get_split_status(pb.GetSplitStatusRequest(shard=shard))
            return s.splits[0].phase == "cleanup_done"

        try:
            await _until(lambda: done(left), "the second split's cleanup done", 60)
            await _until(lambda: done(parent), "the first split's cleanup done", 60)
        except trio.TooSlowError:
            st = await SiloService(a).get_split_status(pb.GetSplitStatusRequest())
            raise AssertionError(st.to_dict()) from None
        assert left not in a.shards and parent not in a.shards

"""Splitting a shard on a node with coordination ``none``: pause, close, clone, commit, open,
cleanup; crashes at each phase are finished (after the commit) or undone (before it)."""

from __future__ import annotations

import pytest
import trio

from silo.cluster.shard_map import tenant_hash
from silo.cluster.split import NeedsLease, SplitPhase, key_owner
from silo.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from silo.keys import Prefix, key
from silo.model import JobStatus
from silo.node import NodeConfig, SiloNode, open_node
from silo.shard import ShardConfig
from tests.shard.support import LEASE_MS, World, lease, new_job

TENANTS = [f"tenant-{i}" for i in range(12)]


@pytest.fixture(params=["memory", "leveldb"])
def world(request: pytest.FixtureRequest, tmp_path) -> World:  # noqa: ANN001
    return World(request.param, str(tmp_path))


@pytest.fixture
def memory_world(tmp_path) -> World:  # noqa: ANN001
    return World("memory", str(tmp_path))


def config(world: World, **kw: object) -> NodeConfig:
    shard = ShardConfig(lease_ms=LEASE_MS, cleanup_batch_keys=7)
    return NodeConfig(data_dir=world.path, shards=1, shard=shard, **kw)  # type: ignore[arg-type]


async def fill(node: SiloNode, per_tenant: int = 3) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    for t in TENANTS:
        for i in range(per_tenant):
            job_id = await node.shard_for_tenant(t).enqueue(
                new_job(f"{t}-{i}", tenant=t, metadata={"k": str(i)}))
            jobs.setdefault(t, []).append(job_id)
    return jobs


async def wait_cleanup(node: SiloNode, parent: int) -> None:
    with trio.fail_after(30):
        while node.splitter.records[parent].phase != SplitPhase.CLEANUP_DONE:
            await trio.sleep(0)


async def every_key_tenant(node: SiloNode, shard_id: int) -> set[str]:
    """Tenants owning any row of the shard's store (lease expiries through their lease)."""
    kv = node.shards[shard_id]._store.kv
    out = set()
    for k, v in await kv.scan(b"", None):
        owner = key_owner(k, v)
        if isinstance(owner, NeedsLease):
            lease_key = key(Prefix.LEASE, owner.task_id)
            owner = key_owner(lease_key, await kv.get(lease_key))
        if owner is not None:
            out.add(owner)
    return out


async def test_split_serves_children_and_cleans_up(world: World) -> None:
    async with open_node(world.runtime, config(world)) as node:
        jobs = await fill(node)
        leased = await lease(node.shards[0], 5)
        record = await node.splitter.request(0)
        assert record.phase == SplitPhase.CHILDREN_OPEN
        assert sorted(node.shards) == [1, 2]
        assert [s.shard_id for s in node.shard_map.shards] == [1, 2]
        assert not await world.disk.exists(node.shard_path(0))
        # Children serve their own tenants at once, every job is where its tenant routes.
        for t, ids in jobs.items():
            shard = node.shard_for_tenant(t)
            assert shard.shard_id == node.shard_map.shard_for_tenant(t).shard_id
            for job_id in ids:
                assert (await shard.get_job(t, job_id)).state.status in (
                    JobStatus.SCHEDULED, JobStatus.RUNNING)
        # The default point is the weighted median: both children got tenants.
        left, right = record.children
        hashes = sorted(tenant_hash(t) for t in TENANTS)
        assert record.split_hash in hashes
        assert sum(left.contains(h) for h in hashes) == 6
        await wait_cleanup(node, 0)
        for child in (left, right):
            shard = node.shards[child.shard_id]
            assert all(child.contains(tenant_hash(t))
                       for t in await every_key_tenant(node, child.shard_id))
            assert shard.counters() == await shard.recount()
            # Each lease lives in exactly the child that owns its tenant.
            for task in leased:
                assert shard.holds_lease(task.task_id) == child.contains(
                    tenant_hash(task.tenant))
            # Queues hold only in-range work.
            got = await lease(shard, 100)
            assert all(child.contains(tenant_hash(t.tenant)) for t in got)
        total = sum(node.shards[c].statistics().jobs_total for c in (1, 2))
        assert total == len(TENANTS) * 3
        status = node.splitter.status(0)[0]
        assert [c.stage for c in status.children] == ["done", "done"]
        assert sum(c.deleted for c in status.children) > 0
    # A restart finds the children and no parent.
    async with open_node(world.runtime, config(world)) as node:
        assert sorted(node.shards) == [1, 2]
        assert node.splitter.records[0].phase == SplitPhase.CLEANUP_DONE


async def test_old_shard_ids_are_forwarded_to_the_child(memory_world: World) -> None:
    world = memory_world
    async with open_node(world.runtime, config(world)) as node:
        await fill(node, 1)
        task = (await lease(node.shards[0], 1))[0]
        await node.splitter.request(0)
        owner = node.shard_map.shard_for_tenant(task.tenant).shard_id
        assert node.route(0, task.tenant) == owner
        assert node.shard_for_task(0, task.task_id).shard_id == owner
        with pytest.raises(NotFound, match="shard not found"):
            node.shard(0)


async def test_at_hash_is_validated(memory_world: World) -> None:
    async with open_node(memory_world.runtime, config(memory_world)) as node:
        for bad in (0, 1 << 64):
            with pytest.raises(InvalidArgument, match="not strictly inside"):
                await node.splitter.request(0, bad)
        with pytest.raises(InvalidArgument, match="shard 7 is not in the shard map"):
            await node.splitter.request(7)
        assert sorted(node.shards) == [0] and node.splitter.records == {}
        record = await node.splitter.request(0, 1 << 63)
        assert record.split_hash == 1 << 63


async def test_paused_parent_answers_unavailable(memory_world: World) -> None:
    async with open_node(memory_world.runtime, config(memory_world)) as node:
        await fill(node, 1)
        seen: list[str] = []

        def on_phase(record) -> None:  # noqa: ANN001
            if record.phase == SplitPhase.PAUSED:
                with pytest.raises(Unavailable, match="paused for a split"):
                    node.shard_for_tenant(TENANTS[0])
                seen.append("paused")

        node.splitter.on_phase = on_phase
        await node.splitter.request(0)
        assert seen == ["paused"]


async def test_a_failed_clone_is_undone(memory_world: World,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    world = memory_world
    async with open_node(world.runtime, config(world)) as node:
        jobs = await fill(node, 1)

        async def broken_clone(src: str, dst: str) -> None:
            from silo.runtime.disk import DiskError
            raise DiskError("no space left")

        monkeypatch.setattr(world.disk, "clone", broken_clone)
        with pytest.raises(Aborted, match="undone"):
            await node.splitter.request(0)
        assert sorted(node.shards) == [0] and node.paused == {}
        assert node.splitter.records[0].phase == SplitPhase.ABORTED
        t = TENANTS[0]
        assert (await node.shard_for_tenant(t).get_job(t, jobs[t][0])).info.job_id == jobs[t][0]


class Crash(Exception):
    pass


@pytest.mark.parametrize("phase", [SplitPhase.REQUESTED, SplitPhase.PAUSED, SplitPhase.CLONED,
                                   SplitPhase.COMMITTED, SplitPhase.CHILDREN_OPEN])
async def test_crash_at_each_phase_is_finished_or_undone(memory_world: World,
                                                          phase: SplitPhase) -> None:
    """The node dies right after recording ``phase`` (its process is gone: nothing is undone
    in it); reopening undoes a split that did not commit and finishes one that did."""
    world = memory_world
    crashed: list[bool] = []
    try:
        with trio.CancelScope() as scope:
            async with open_node(world.runtime, config(world)) as node:
                jobs = await fill(node)

                def on_phase(record) -> None:  # noqa: ANN001
                    if record.phase == phase and not crashed:
                        world.disk.crash()
                        crashed.append(True)
                        scope.cancel()

                node.splitter.on_phase = on_phase
                await node.splitter.request(0)
                await trio.sleep_forever()
    except Exception:  # noqa: BLE001 - the crashed disk's errors while the node unwinds
        pass
    assert crashed
    async with open_node(world.runtime, config(world)) as node:
        record = node.splitter.records[0]
        if phase.committed:
            await wait_cleanup(node, 0)
            assert sorted(node.shards) == [1, 2]
            assert not await world.disk.exists(node.shard_path(0))
        else:
            assert record.phase == SplitPhase.ABORTED
            assert sorted(node.shards) == [0]
            for child in (1, 2):
                assert not await world.disk.exists(node.shard_path(child))
        for t, ids in jobs.items():
            for job_id in ids:
                assert (await node.shard_for_tenant(t).get_job(t, job_id)).info.job_id == job_id
        for shard in node.shards.values():
            assert shard.counters() == await shard.recount()


async def test_a_second_split_while_one_runs_is_refused(memory_world: World) -> None:
    async with open_node(memory_world.runtime, config(memory_world)) as node:
        await fill(node, 1)
        errors: list[Exception] = []

        async def on_phase(record) -> None:  # noqa: ANN001
            if record.phase == SplitPhase.PAUSED and not errors:
                try:
                    await node.splitter.request(0)
                except FailedPrecondition as exc:
                    errors.append(exc)

        node.splitter.on_phase = on_phase
        await node.splitter.request(0)
        assert "another split is in progress" in str(errors[0])


async def test_cleanup_closed_midway_resumes_on_reopen(memory_world: World) -> None:
    world = memory_world
    async with open_node(world.runtime, config(world)) as node:
        await fill(node, 5)
        node.splitter.on_phase = lambda record: None
        # Hold the cleanup: close the node right after the children open.
        closed_at: dict[int, int] = {}

        def on_phase(record) -> None:  # noqa: ANN001
            if record.phase == SplitPhase.CHILDREN_OPEN:
                for c in (record.left, record.right):
                    m = node.shards[c].split_marker()
                    closed_at[c] = m.deleted
        node.splitter.on_phase = on_phase
        await node.splitter.request(0)
    assert closed_at
    async with open_node(world.runtime, config(world)) as node:
        await wait_cleanup(node, 0)
        for c in (1, 2):
            shard = node.shards[c]
            assert shard.split_marker().done
            assert shard.counters() == await shard.recount()


async def test_split_metrics(memory_world: World) -> None:
    from silo.http.metrics import Metrics

    async with open_node(memory_world.runtime, config(memory_world)) as node:
        await fill(node, 2)
        metrics = Metrics()
        metrics.attach(node)
        await node.splitter.request(0)
        await wait_cleanup(node, 0)
        get = metrics.registry.get_sample_value
        for phase in ("requested", "paused", "cloned", "committed", "children_open",
                      "cleanup_done"):
            assert get("silo_split_phase_transitions_total", {"phase": phase}) == 1, phase
        assert get("silo_splits", {"phase": "cleanup_done"}) == 1
        deleted = [get("silo_split_cleanup_keys_deleted", {"shard": s}) for s in ("1", "2")]
        assert all(d and d > 0 for d in deleted)
        assert get("silo_split_cleanup_done", {"shard": "1"}) == 1


async def test_a_child_split_again_before_its_cleanup_stays_retired(memory_world: World) -> None:
    """split seed 458: shard 0 splits into 1 and 2; before that split's cleanup ends, 2 splits
    into 3 and 4 (its directory is deleted); the node restarts. Finishing the first split must
    not open shard 2 again (it would come up empty and refuse its old tenants as belonging
    elsewhere), and the first split's cleanup counts as done once the second's is: 3 and 4
    swept everything outside their ranges, which lie inside 2's."""
    world = memory_world
    slow = ShardConfig(lease_ms=LEASE_MS, cleanup_batch_keys=2, cleanup_pause_s=0.05)
    async with open_node(world.runtime, NodeConfig(data_dir=world.path, shards=1,
                                                   shard=slow)) as node:
        jobs = await fill(node, 2)
        await node.splitter.request(0)
        assert node.splitter.records[0].phase == SplitPhase.CHILDREN_OPEN  # time stands still
        await node.splitter.request(2)
        assert node.splitter.records[0].phase == SplitPhase.CHILDREN_OPEN
        assert sorted(node.shards) == [1, 3, 4]
    async with open_node(world.runtime, config(world)) as node:
        assert sorted(node.shards) == [1, 3, 4]
        await wait_cleanup(node, 2)
        await wait_cleanup(node, 0)
        assert sorted(node.shards) == [1, 3, 4]
        assert not await world.disk.exists(node.shard_path(2))
        for t, ids in jobs.items():
            owner = node.shard_map.shard_for_tenant(t).shard_id
            if owner != 1:
                assert node.route(2, t) == owner  # the retired id is forwarded
            for job_id in ids:
                assert (await node.shards[owner].get_job(t, job_id)).info.job_id == job_id

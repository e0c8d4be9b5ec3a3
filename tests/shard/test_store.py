"""The shard's write path (DESIGN §4): group commit, write ordering, and rollback of in-memory
state when a write fails."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from silo import keys
from silo.errors import Unavailable
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import Failure, JobStatus, Success
from silo.runtime import RandomSource, Runtime
from silo.runtime.disk import WriteBatch
from silo.shard import JobShard, open_shard
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    durable_stats,
    lease,
    lease_one,
    new_job,
    report,
    status_of,
    store_items,
)

S = JobStatus


# -- group commit -------------------------------------------------------------------------------


class SlowSyncStore:
    """Adds the latency of a real disk's fsync (this VM's is about 0.5 ms) to synced writes."""

    def __init__(self, inner, delay_s: float) -> None:  # noqa: ANN001
        self._inner = inner
        self._delay_s = delay_s

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._inner, name)

    async def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        await self._inner.write(batch, sync=sync)
        if sync:
            await trio.sleep(self._delay_s)


@pytest.mark.parametrize("fsync_ms, bound", [(0, 100), (3, 50)], ids=["raw", "fsync-3ms"])
async def test_concurrent_enqueues_share_synced_writes(
    tmp_path, fsync_ms: int, bound: int  # noqa: ANN001
) -> None:
    """Group commit on LevelDB: 100 concurrent enqueues need far fewer than 100 synced writes.

    How far fewer depends on how long a synced write takes compared with the time an enqueue
    holds the shard lock (one read of the job key in a worker thread, ~0.3 ms here). On this
    VM a synced write takes ~0.5 ms, so groups are small and the count varies with load
    (8-65 seen); with a 3 ms fsync, as on a real disk, groups are large.
    """
    world = World("leveldb", str(tmp_path))
    if fsync_ms:
        inner_open = world.disk.open

        async def slow_open(path: str) -> SlowSyncStore:
            return SlowSyncStore(await inner_open(path), fsync_ms / 1000)

        world.disk.open = slow_open  # type: ignore[method-assign]
    async with world.open() as shard:
        before = shard.statistics().synced_writes
        ids: list[str] = []

        async def one(i: int) -> None:
            ids.append(await shard.enqueue(new_job(f"job-{i}")))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(one, i)
        stats = shard.statistics()
        writes = stats.synced_writes - before
        print(f"\n100 concurrent enqueues on LevelDB (fsync +{fsync_ms} ms): {writes} writes")
        assert sorted(ids) == sorted(f"job-{i}" for i in range(100))
        assert writes < bound
        assert stats.batches_committed == 100 and stats.groups_committed == writes
        assert stats.jobs_total == 100
        await check_counters(shard)
    async with world.open() as shard:
        assert shard.statistics().jobs_total == 100


async def test_every_waiting_batch_joins_the_next_group(memory_world: World) -> None:
    """Deterministically: while one write is in flight, 99 enqueues queue up; the writer then
    takes all of them into one synced write."""
    world = memory_world
    disk = GatedDisk(world.disk)
    runtime = Runtime(clock=world, random=RandomSource(0), disk=disk)
    async with open_shard(runtime, world.path) as shard:
        store = disk.stores[-1]
        gate = store.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shard.enqueue, new_job("job-0"))
            await store.entered.wait()
            for i in range(1, 100):
                nursery.start_soon(shard.enqueue, new_job(f"job-{i}"))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        stats = shard.statistics()
        assert (stats.synced_writes, stats.batches_committed) == (2, 100)
        assert [len(ks) for ks in disk.log][1] > 99 * 5  # one write carrying 99 jobs


# -- ordering -----------------------------------------------------------------------------------


class GatedStore:
    """A store whose next write can be held in flight until a gate opens; logs what it writes."""

    def __init__(self, inner, log: list[list[bytes]]) -> None:  # noqa: ANN001
        self._inner = inner
        self._log = log
        self.gate: trio.Event | None = None
        self.entered = trio.Event()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._inner, name)

    async def write(self, batch: WriteBatch, *, sync: bool = True) -> None:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.entered.set()
            with trio.CancelScope(shield=True):  # a write in flight is not cancellable
                await gate.wait()
        self._log.append([k for k, _ in batch])
        await self._inner.write(batch, sync=sync)


class GatedDisk:
    def __init__(self, inner) -> None:  # noqa: ANN001
        self._inner = inner
        self.log: list[list[bytes]] = []
        self.stores: list[GatedStore] = []

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._inner, name)

    async def open(self, path: str) -> GatedStore:
        store = GatedStore(await self._inner.open(path), self.log)
        self.stores.append(store)
        return store


async def test_close_does_not_overtake_a_group_in_flight(memory_world: World) -> None:
    """Groups reach the disk in submission order, also when closing flushes while the writer
    still has a group in flight; so an acknowledged operation implies every earlier one is
    durable."""
    world = memory_world
    disk = GatedDisk(world.disk)
    runtime = Runtime(clock=world, random=RandomSource(0), disk=disk)
    acked: list[str] = []

    async def enqueue(shard: JobShard, job_id: str) -> None:
        await shard.enqueue(new_job(job_id))
        acked.append(job_id)

    async def open_gate_when_all_blocked(gate: trio.Event) -> None:
        await trio.testing.wait_all_tasks_blocked()
        gate.set()

    async with trio.open_nursery() as nursery:
        async with open_shard(runtime, world.path) as shard:
            store = disk.stores[-1]
            gate = store.gate = trio.Event()
            nursery.start_soon(enqueue, shard, "first")
            await store.entered.wait()  # "first" is in flight
            nursery.start_soon(enqueue, shard, "second")
            await trio.testing.wait_all_tasks_blocked()  # "second" is queued behind it
            nursery.start_soon(open_gate_when_all_blocked, gate)
            # Leaving the block closes the shard while "first" is still in flight.

    def position(job_id: str) -> int:
        k = keys.key(Prefix.JOB, T, job_id)
        return next(i for i, ks in enumerate(disk.log) if k in ks)

    assert position("first") < position("second")
    assert acked == ["first", "second"]
    async with world.open() as shard:
        assert shard.statistics().jobs_total == 2


# -- failed writes ------------------------------------------------------------------------------


def _ops(world: World, shard: JobShard, tasks: dict) -> dict:  # noqa: ANN001
    """Mutations to try while every write fails, each against a fresh piece of state."""
    return {
        "enqueue": lambda: shard.enqueue(new_job("new")),
        "enqueue_batch": lambda: shard.enqueue_batch([new_job("n1"), new_job("n2")]),
        "lease": lambda: shard.lease_tasks(WORKER, "g", 10),
        "heartbeat": lambda: shard.heartbeat(WORKER, tasks["r1"].task_id),
        "report_success": lambda: shard.report_outcome(report(tasks["r1"], Success(b"x"))),
        "report_failure": lambda: shard.report_outcome(report(tasks["r2"], Failure("E"))),
        "cancel_scheduled": lambda: shard.cancel(T, "queued"),
        "cancel_running": lambda: shard.cancel(T, "r1"),
        "restart": lambda: shard.restart(T, "failed"),
        "expedite": lambda: shard.expedite(T, "future"),
        "delete": lambda: shard.delete(T, "failed"),
        "reap": lambda: shard.reap_expired(),
        "promote": lambda: shard.promote_due(),
    }


OPS = list(_ops(None, None, {}))  # type: ignore[arg-type]


async def _setup(world: World, shard: JobShard, *, due_work: bool) -> dict:
    await shard.enqueue_batch([new_job("r1", priority=0), new_job("r2", priority=0, retry_count=1),
                               new_job("f", priority=0)])
    tasks = {t.job_id: t for t in await lease(shard, 3)}
    await shard.report_outcome(report(tasks.pop("f"), Failure("E")))
    await shard.enqueue(new_job("queued"))
    await shard.enqueue(new_job("future", start_at_ms=world.now_ms() + 10))
    await shard.enqueue(new_job("failed"))
    await shard.report_outcome(report(await lease_one(shard), Failure("E")))
    if due_work:
        # Something for the reaper and the timer to do: r1's lease expires, "future" is due.
        # (Trio time stands still, so the shard's own loops do not notice.)
        world.advance(LEASE_MS - 1)
        await shard.heartbeat(WORKER, tasks["r2"].task_id)
        world.advance(1)
    return tasks


async def _views(shard: JobShard) -> dict:
    out = {}
    for job_id in ("r1", "r2", "f", "queued", "future", "failed"):
        out[job_id] = await shard.get_job(T, job_id, include_attempts=True)
    return out


@pytest.fixture
def frozen_world(tmp_path) -> World:  # noqa: ANN001
    return World("memory", str(tmp_path), trio_follows=False)


@pytest.mark.parametrize("op", OPS)
async def test_a_failed_write_changes_nothing_in_memory_or_on_disk(
    frozen_world: World, op: str
) -> None:
    world = frozen_world
    async with world.open() as shard:
        due_work = op in ("reap", "promote")
        tasks = await _setup(world, shard, due_work=due_work)
        views = await _views(shard)
        items = await store_items(shard)
        stats = durable_stats(shard)
        counters = shard.counters()

        # Every write fails from now on (the shard's own loops may try too, and fail).
        world.faults.rates["disk.write.error"] = 1.0
        world.advance(1)  # so that a heartbeat has something to write
        with pytest.raises(Unavailable):
            await _ops(world, shard, tasks)[op]()
        # When UNAVAILABLE arrives, the in-memory state is already what is on disk.
        assert shard.counters() == counters
        assert durable_stats(shard) == stats
        # Let the shard's loops (woken by the reload) try their own writes, and fail, first.
        await trio.testing.wait_all_tasks_blocked()
        assert await shard.recount() == counters
        assert await store_items(shard) == items
        assert await _views(shard) == views  # and reads work at once
        assert durable_stats(shard) == stats
    world.faults.rates.clear()
    assert await world.raw_items() == items
    async with world.open() as shard:
        assert shard.counters() == counters
        await check_counters(shard)
        if not due_work:  # otherwise the loops now do what the op did not
            assert await _views(shard) == views
            assert durable_stats(shard) == stats
        # And the shard works normally afterwards.
        await shard.enqueue(new_job("after"))
        assert await status_of(shard, "after") == S.SCHEDULED
        await check_counters(shard)


async def test_operations_after_a_failed_write_succeed(memory_world: World) -> None:
    world = memory_world
    async with world.open() as shard:
        await shard.enqueue(new_job("a"))
        world.faults.rates["disk.write.error"] = 1.0
        with pytest.raises(Unavailable):
            await shard.enqueue(new_job("b"))
        world.faults.rates.clear()
        task = await lease_one(shard)
        assert task.job_id == "a"
        await shard.report_outcome(report(task, Success()))
        await shard.enqueue(new_job("b"))
        assert await status_of(shard, "b") == S.SCHEDULED
        await check_counters(shard)

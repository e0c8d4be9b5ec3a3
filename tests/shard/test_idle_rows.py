"""Per-key limit state is bounded by what is in use (issue 8, defect 8): a rate reservation a period
past its time, a concurrency or floating queue with no holders, no waiting requests and no refresh
pending, and a counter that has dropped to zero keep no row on disk. A queue without a row answers
GetQueue as idle."""

from __future__ import annotations

import trio
import trio.testing

from silo import keys
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import (
    ConcurrencyLimit,
    FloatingConcurrencyLimit,
    RateLimit,
    Success,
    decode_int,
)
from silo.shard.mirror import COUNTER_PREFIX
from tests.shard.support import (
    WORKER,
    World,
    check_counters,
    lease,
    lease_one,
    limited_job,
    report,
    store_items,
)

N = 1000
PER_MS = 1000


async def limit_rows(shard) -> list[tuple[Prefix, tuple]]:  # noqa: ANN001
    """The stored rows of queue state, rate reservations and zero-valued counters."""
    out = []
    for k, v in await store_items(shard):
        prefix, parts = keys.parse(k)
        if prefix in (Prefix.FLOATING_LIMIT, Prefix.RATE_BUCKET, Prefix.RATE_RESERVATION):
            out.append((prefix, parts))
        elif k.startswith(COUNTER_PREFIX) and decode_int(k, v) == 0:
            out.append((prefix, parts))
    return out


async def settle(world: World, ms: int) -> None:
    """Let ``ms`` pass and the shard's background loops act on it."""
    world.advance(ms)
    await trio.testing.wait_all_tasks_blocked()


async def test_rows_of_drained_rate_keys_and_queues_are_deleted(memory_world: World) -> None:
    world = memory_world
    async with world.open() as shard:
        await shard.enqueue_batch([
            limited_job(f"j{i:04d}", ConcurrencyLimit(f"q{i:04d}", 1),
                        RateLimit("api", f"k{i:04d}", 1, PER_MS))
            for i in range(N)
        ])
        tasks = await lease(shard)
        assert len(tasks) == N
        assert len(await limit_rows(shard)) >= 2 * N  # one queue row and one reservation per key
        await shard.report_outcomes([report(t, Success()) for t in tasks])
        # The queues are idle at once; the reservations once a period has passed.
        await settle(world, PER_MS)
        assert await limit_rows(shard) == []
        assert shard._mirror.reservations == {} and shard._mirror.queues == {}
        # A queue without a row is idle: no holders, nobody waiting.
        info = shard.queue_info(T, "q0000")
        assert (info["holders"], info["waiting"], info["holder_task_ids"]) == (0, 0, [])
        # Used again, a key starts with every token free and the job's own max.
        await shard.enqueue(limited_job("again", ConcurrencyLimit("q0000", 2),
                                        RateLimit("api", "k0000", 1, PER_MS)))
        assert shard.queue_info(T, "q0000")["max_concurrency"] == 2
        assert (await lease_one(shard)).job_id == "again"
        await check_counters(shard)


async def test_a_reservation_keeps_its_row_for_one_period_after_its_time(
    memory_world: World,
) -> None:
    world = memory_world
    rate = RateLimit("api", "k", 1, PER_MS)
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i}", rate) for i in range(3)])
        for i in range(3):
            if i:
                await settle(world, PER_MS)
            task = await lease_one(shard)
            await shard.report_outcome(report(task, Success()))
            # Reserved at 0, 1 and 2 s: each row goes one period after its slot.
            assert [p for p, _ in await limit_rows(shard)] == [Prefix.RATE_RESERVATION] * (3 - i)
        await settle(world, PER_MS - 1)
        assert [p for p, _ in await limit_rows(shard)] == [Prefix.RATE_RESERVATION]
        await settle(world, 1)
        assert await limit_rows(shard) == []


async def test_an_idle_floating_queue_keeps_no_row(memory_world: World) -> None:
    world = memory_world
    floating = FloatingConcurrencyLimit("F", 1, 10_000)
    async with world.open() as shard:
        await shard.enqueue(limited_job("j", floating))
        refresh = await lease_one(shard)
        assert refresh.refresh is not None
        job = await lease_one(shard)
        await shard.report_refresh(WORKER, refresh.task_id, 3)
        await shard.report_outcome(report(job, Success()))
        # The next refresh is still scheduled: the row stays until it finds no work.
        assert [p for p, _ in await limit_rows(shard)] == [Prefix.FLOATING_LIMIT]
        await settle(world, 10_000)
        assert await lease(shard) == []
        assert await limit_rows(shard) == []
        info = shard.queue_info(T, "F")
        assert (info["holders"], info["waiting"]) == (0, 0)


async def test_counters_that_drop_to_zero_are_deleted(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("j"))
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Success()))
        # The SCHEDULED and RUNNING counters of the tenant went 1 -> 0: no row holds a zero.
        assert await limit_rows(shard) == []
        await shard.delete(T, "j")
        assert await limit_rows(shard) == []
        assert [k for k, _ in await store_items(shard) if k.startswith(COUNTER_PREFIX)] == []
        await check_counters(shard)

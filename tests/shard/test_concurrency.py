"""Concurrency limits through a shard (DESIGN §5): acquisition in order, parking, release on every
way an attempt ends (with the freed slot granted in the same batch), grant order, several limits
per job, restart / expedite, changed maxes, head of line, and the planted limit bugs."""

from __future__ import annotations

import pytest

from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import (
    Cancelled,
    ConcurrencyLimit,
    Failure,
    JobStatus,
    RateLimit,
    Success,
)
from silo.runtime import Faults
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    holder_rows,
    lease,
    lease_one,
    limited_job,
    prefixes_of,
    report,
    request_rows,
    store_items,
    where_is,
)

S = JobStatus
A = ConcurrencyLimit("A", 1)
B = ConcurrencyLimit("B", 1)
QA = (T, "A")
QB = (T, "B")


def assert_mirror_matches(shard, rows: dict[tuple[str, str], list[str]]) -> None:  # noqa: ANN001
    """The in-memory holder counts equal the durable holder rows."""
    assert shard._mirror.holders == {q: len(ids) for q, ids in rows.items()}
    assert shard.statistics().slots_held == sum(len(ids) for ids in rows.values())


# -- acquisition ----------------------------------------------------------------------------------


async def test_limits_are_acquired_before_the_attempt_is_ready(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("j1", A, B))
        assert await where_is(shard, "j1") == "READY"
        state = (await shard.get_job(T, "j1")).state
        assert state.held == 2
        assert await holder_rows(shard) == {QA: ["j1"], QB: ["j1"]}
        # A full queue parks the next job: not in the ready queue, waiting_for names the queue.
        await shard.enqueue(limited_job("j2", A))
        assert await where_is(shard, "j2") == "PARKED"
        view = await shard.get_job(T, "j2")
        assert "'A'" in view.waiting_for and "1/1 held" in view.waiting_for
        assert "1 waiting" in view.waiting_for
        assert await request_rows(shard) == {QA: ["j2"]}
        assert shard.statistics().parked_requests == 1
        assert [t.job_id for t in await lease(shard)] == ["j1"]
        assert await lease(shard) == []
        assert await holder_rows(shard) == {QA: ["j1"], QB: ["j1"]}
        assert_mirror_matches(shard, await holder_rows(shard))
        await check_counters(shard)


async def test_holders_never_exceed_max(memory_world: World) -> None:
    async with memory_world.open() as shard:
        limit = ConcurrencyLimit("A", 3)
        await shard.enqueue_batch([limited_job(f"j{i}", limit) for i in range(10)])
        running = []
        for finished in range(10):
            running += await lease(shard)
            rows = await holder_rows(shard)
            assert len(rows[QA]) == len(running) == min(3, 10 - finished)
            assert sorted(t.job_id for t in running) == rows[QA]
            # End one of them: exactly one waiting job takes its place.
            await shard.report_outcome(report(running.pop(0), Success()))
        assert running == []
        assert await holder_rows(shard) == {}
        assert await request_rows(shard) == {}
        assert shard.statistics().jobs_by_status["SUCCEEDED"] == 10


# -- release on every way an attempt ends ---------------------------------------------------------


async def end_attempt(world: World, shard, task, how: str) -> None:  # noqa: ANN001
    if how == "success":
        await shard.report_outcome(report(task, Success()))
    elif how in ("failure", "failure-retry"):
        await shard.report_outcome(report(task, Failure("E")))
    elif how == "cancelled":
        await shard.report_outcome(report(task, Cancelled()))
    elif how == "reaped":
        world.advance(LEASE_MS)
        await shard.reap_expired()
    else:
        raise AssertionError(how)


ENDS = {
    "success": S.SUCCEEDED,
    "failure": S.FAILED,
    "failure-retry": S.SCHEDULED,
    "cancelled": S.CANCELLED,
    "reaped": S.FAILED,
}


@pytest.mark.parametrize("how", list(ENDS))
async def test_ending_an_attempt_releases_and_grants_in_the_same_batch(
    world: World, how: str
) -> None:
    retries = 1 if how == "failure-retry" else 0
    async with world.open() as shard:
        await shard.enqueue(limited_job("j1", A, retry_count=retries, initial_ms=5000))
        world.advance(1)
        await shard.enqueue(limited_job("j2", A))
        world.advance(1)
        await shard.enqueue(limited_job("j3", A))
        task = await lease_one(shard)
        assert task.job_id == "j1"
        assert await where_is(shard, "j2") == "PARKED"
        if how == "reaped":
            await shard.acknowledge(WORKER, [task.task_id])  # delivered: its expiry is a crash
        writes = shard.statistics().synced_writes
        await end_attempt(world, shard, task, how)
        # One batch ended the attempt, released j1's slot and granted it to j2.
        assert shard.statistics().synced_writes == writes + 1
        assert (await shard.get_job(T, "j1")).state.status == ENDS[how]
        assert await where_is(shard, "j2") == "READY"
        assert await where_is(shard, "j3") == "PARKED"
        rows = await holder_rows(shard)
        assert rows == {QA: ["j2"]}
        assert_mirror_matches(shard, rows)
        assert await request_rows(shard) == {QA: ["j3"]}
        if how == "failure-retry":
            # The slot stays free of j1 during its backoff; when due it acquires from scratch
            # and waits behind j3, which asked first.
            assert await where_is(shard, "j1") == "TIMER"
            assert (await shard.get_job(T, "j1")).state.held == 0
            world.advance(5000)
            await shard.promote_due()
            assert await where_is(shard, "j1") == "PARKED"
            assert await request_rows(shard) == {QA: ["j3", "j1"]}
        t2 = await lease_one(shard)
        assert t2.job_id == "j2"
        await shard.report_outcome(report(t2, Success()))
        assert await holder_rows(shard) == {QA: ["j3"]}
        t3 = await lease_one(shard)
        await shard.report_outcome(report(t3, Success()))
        if how == "failure-retry":
            assert await holder_rows(shard) == {QA: ["j1"]}
            t1 = await lease_one(shard)
            assert (t1.job_id, t1.attempt) == ("j1", 2)
            await shard.report_outcome(report(t1, Success()))
        assert await holder_rows(shard) == {}
        assert await request_rows(shard) == {}
        assert_mirror_matches(shard, {})
        await check_counters(shard)


async def test_reports_in_one_batch_release_and_grant_together(memory_world: World) -> None:
    async with memory_world.open() as shard:
        limit = ConcurrencyLimit("A", 2)
        await shard.enqueue_batch([limited_job(f"j{i}", limit) for i in range(5)])
        tasks = await lease(shard)
        assert [t.job_id for t in tasks] == ["j0", "j1"]
        await shard.report_outcomes([report(tasks[0], Success()), report(tasks[1], Failure("E"))])
        assert await holder_rows(shard) == {QA: ["j2", "j3"]}
        assert await request_rows(shard) == {QA: ["j4"]}


@pytest.mark.parametrize("where", ["parked", "future", "ready", "rate-waiting"])
async def test_cancel_of_a_scheduled_job_releases_its_slots_and_request(
    world: World, where: str
) -> None:
    rate = RateLimit("api", "k", 1, 10_000)
    async with world.open() as shard:
        if where == "rate-waiting":
            # "victim" waits for a rate token, holding no slot of A (its token comes first).
            await shard.enqueue(limited_job("spend", rate))
            await shard.enqueue(limited_job("victim", A, rate))
            assert await where_is(shard, "victim") == "TIMER"
            assert "rate limit" in (await shard.get_job(T, "victim")).waiting_for
        elif where == "ready":
            await shard.enqueue(limited_job("victim", A))
            assert await where_is(shard, "victim") == "READY"
        else:
            await shard.enqueue(limited_job("holder", A))
            start = world.now_ms() + 60_000 if where == "future" else 0
            await shard.enqueue(limited_job("victim", A, start_at_ms=start))
            assert await where_is(shard, "victim") == {"parked": "PARKED", "future": "TIMER"}[
                where
            ]
        await shard.enqueue(limited_job("next", A))
        assert await where_is(shard, "next") == ("READY" if where == "rate-waiting" else "PARKED")
        before = await holder_rows(shard)
        await shard.cancel(T, "victim")
        assert await where_is(shard, "victim") == "CANCELLED"
        items = await store_items(shard)
        rows = await holder_rows(shard)
        assert_mirror_matches(shard, rows)
        assert "victim" not in rows.get(QA, [])
        assert "victim" not in (await request_rows(shard)).get(QA, [])
        if where == "ready":
            # Its slot went to the next request in the same batch.
            assert before[QA] == ["victim"]
            assert rows == {QA: ["next"]}
            assert await where_is(shard, "next") == "READY"
        elif where == "rate-waiting":
            assert rows == before == {QA: ["next"]}
        else:
            assert rows == before == {QA: ["holder"]}
            assert await where_is(shard, "next") == "PARKED"
            assert await request_rows(shard) == {QA: ["next"]}
        # No row of any queue (ready, timer, request, holder) mentions the cancelled job's task.
        assert prefixes_of(items, "victim") <= {
            Prefix.JOB, Prefix.STATUS, Prefix.STATUS_INDEX, Prefix.CANCEL, Prefix.JOB_FINGERPRINT,
        }
        await check_counters(shard)


async def test_cancel_of_a_running_job_keeps_the_slot_until_the_attempt_ends(
    world: World,
) -> None:
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job("j1", A), limited_job("j2", A)])
        task = await lease_one(shard)
        await shard.cancel(T, "j1")
        assert await holder_rows(shard) == {QA: ["j1"]}
        assert await where_is(shard, "j2") == "PARKED"
        await shard.report_outcome(report(task, Failure("E")))
        assert await where_is(shard, "j1") == "CANCELLED"
        assert await holder_rows(shard) == {QA: ["j2"]}
        assert await where_is(shard, "j2") == "READY"


# -- grant order ----------------------------------------------------------------------------------


async def test_requests_are_granted_by_priority_then_due_time(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", A))
        for job_id, prio in [("low", 80), ("mid-1", 50), ("high", 10), ("mid-2", 50),
                             ("mid-3", 50)]:
            world.advance(10)
            await shard.enqueue(limited_job(job_id, A, priority=prio))
        assert await request_rows(shard) == {QA: ["high", "mid-1", "mid-2", "mid-3", "low"]}
        granted = []
        for _ in range(6):
            task = await lease_one(shard)
            granted.append(task.job_id)
            assert await lease(shard) == []  # only the holder of the one slot is leasable
            await shard.report_outcome(report(task, Success()))
        assert granted == ["holder", "high", "mid-1", "mid-2", "mid-3", "low"]
        assert await holder_rows(shard) == {}


async def test_a_free_slot_is_not_taken_ahead_of_waiting_requests(memory_world: World) -> None:
    """A job arriving when a slot is free but others wait queues behind them (no barging)."""
    async with memory_world.open() as shard:
        await shard.enqueue_batch([limited_job("j1", A), limited_job("j2", A, priority=10)])
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Success()))
        assert await where_is(shard, "j2") == "READY"
        await shard.enqueue(limited_job("j3", A, priority=0))
        assert await where_is(shard, "j3") == "PARKED"


# -- several limits -------------------------------------------------------------------------------


async def test_job_holds_first_limit_while_parked_on_the_second(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("b-holder", B))
        world.advance(1)
        await shard.enqueue(limited_job("both", A, B))
        world.advance(1)
        await shard.enqueue(limited_job("a-only", A))
        world.advance(1)
        await shard.enqueue(limited_job("b-next", B))
        assert await where_is(shard, "both") == "PARKED"
        view = await shard.get_job(T, "both")
        assert view.state.held == 1 and "'B'" in view.waiting_for
        assert await holder_rows(shard) == {QA: ["both"], QB: ["b-holder"]}
        assert await request_rows(shard) == {QA: ["a-only"], QB: ["both", "b-next"]}
        # Releasing B grants the next B request ("both"), which is then ready.
        task = await lease_one(shard)
        assert task.job_id == "b-holder"
        await shard.report_outcome(report(task, Success()))
        assert await where_is(shard, "both") == "READY"
        assert await holder_rows(shard) == {QA: ["both"], QB: ["both"]}
        # Cancelling it releases both slots, each to its next request, in one batch.
        await shard.cancel(T, "both")
        rows = await holder_rows(shard)
        assert rows == {QA: ["a-only"], QB: ["b-next"]}
        assert_mirror_matches(shard, rows)
        assert await request_rows(shard) == {}
        assert {t.job_id for t in await lease(shard)} == {"a-only", "b-next"}


async def test_cancel_of_a_job_parked_on_its_second_limit_releases_the_first(
    world: World,
) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("b-holder", B))
        await shard.enqueue(limited_job("both", A, B))
        await shard.enqueue(limited_job("a-only", A))
        await shard.cancel(T, "both")
        rows = await holder_rows(shard)
        assert rows == {QA: ["a-only"], QB: ["b-holder"]}
        assert await request_rows(shard) == {}
        assert await where_is(shard, "a-only") == "READY"


async def test_chain_of_grants_across_queues_in_one_batch(memory_world: World) -> None:
    """A grant on A that parks the job on B, whose release in the same batch grants it too."""
    async with memory_world.open() as shard:
        await shard.enqueue(limited_job("x", A, B))
        await shard.enqueue(limited_job("y", A, B))
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Success()))
        assert await where_is(shard, "y") == "READY"
        assert await holder_rows(shard) == {QA: ["y"], QB: ["y"]}


# -- restart and expedite -------------------------------------------------------------------------


async def test_restart_acquires_from_scratch(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("j1", A))
        await shard.enqueue(limited_job("j2", A))
        t1 = await lease_one(shard)
        await shard.report_outcome(report(t1, Failure("E")))
        assert await holder_rows(shard) == {QA: ["j2"]}
        await shard.restart(T, "j1")
        assert await where_is(shard, "j1") == "PARKED"
        assert "'A'" in (await shard.get_job(T, "j1")).waiting_for
        t2 = await lease_one(shard)
        await shard.report_outcome(report(t2, Success()))
        assert await holder_rows(shard) == {QA: ["j1"]}
        t1b = await lease_one(shard)
        assert (t1b.job_id, t1b.attempt) == ("j1", 2)
        await shard.cancel(T, "j1")  # flagged only: it is running
        await shard.report_outcome(report(t1b, Cancelled()))
        assert await holder_rows(shard) == {}
        await shard.restart(T, "j1")  # a cancelled job too
        assert await where_is(shard, "j1") == "READY"
        assert await holder_rows(shard) == {QA: ["j1"]}


async def test_expedite_of_a_future_job_acquires_now(world: World) -> None:
    async with world.open() as shard:
        later = world.now_ms() + 60_000
        await shard.enqueue(limited_job("free", A, start_at_ms=later))
        await shard.enqueue(limited_job("other", B))
        await shard.enqueue(limited_job("full", B, start_at_ms=later))
        assert await holder_rows(shard) == {QB: ["other"]}
        await shard.expedite(T, "free")
        assert await where_is(shard, "free") == "READY"
        await shard.expedite(T, "full")
        assert await where_is(shard, "full") == "PARKED"
        assert await holder_rows(shard) == {QA: ["free"], QB: ["other"]}
        view = await shard.get_job(T, "full")
        assert view.state.next_attempt_at_ms == world.now_ms()
        assert view.state.attempt == 1


async def test_expedite_of_a_job_waiting_for_its_retry_acquires_now(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(limited_job("j", A, retry_count=1, initial_ms=30_000))
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Failure("E")))
        assert await holder_rows(shard) == {}
        await shard.expedite(T, "j")
        assert await where_is(shard, "j") == "READY"
        assert await holder_rows(shard) == {QA: ["j"]}


async def test_expedite_of_a_parked_job_leaves_it_in_its_place(world: World) -> None:
    """A parked request is always already due (it parked when its time came): expedite has no
    earlier time to give it, so it keeps its place (DESIGN §4: expedite moves a future task)."""
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", A))
        world.advance(1)
        await shard.enqueue(limited_job("first", A))
        world.advance(1)
        await shard.enqueue(limited_job("second", A))
        world.advance(1)
        before = await store_items(shard)
        await shard.expedite(T, "second")
        assert await store_items(shard) == before
        assert await request_rows(shard) == {QA: ["first", "second"]}


async def test_expedite_moves_a_parked_job_ahead_within_its_priority(world: World) -> None:
    """Requests parked while the wall clock was ahead (it stepped back since) have due times in
    the future: expedite makes such a request due now, ahead of the later-due requests of its
    priority, never ahead of a higher priority."""
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", A))
        await shard.enqueue(limited_job("urgent", A, priority=10))
        world.advance(10)
        await shard.enqueue(limited_job("first", A))
        world.advance(10)
        await shard.enqueue(limited_job("second", A))
        assert await request_rows(shard) == {QA: ["urgent", "first", "second"]}
        world._elapsed_ms -= 60  # the wall clock steps back
        await shard.expedite(T, "second")
        view = await shard.get_job(T, "second")
        assert view.state.next_attempt_at_ms == world.now_ms()
        assert (view.state.attempt, await where_is(shard, "second")) == (1, "PARKED")
        assert await request_rows(shard) == {QA: ["urgent", "second", "first"]}
        granted = []
        for _ in range(4):
            task = await lease_one(shard)
            granted.append(task.job_id)
            await shard.report_outcome(report(task, Success()))
        assert granted == ["holder", "urgent", "second", "first"]


async def test_expedite_of_a_rate_waiting_job_leaves_it(world: World) -> None:
    rate = RateLimit("api", "k", 1, 10_000)
    async with world.open() as shard:
        await shard.enqueue(limited_job("spend", rate))
        await shard.enqueue(limited_job("waits", A, rate))
        view = await shard.get_job(T, "waits")
        assert view.state.next_attempt_at_ms == world.now_ms() + 10_000
        before = await store_items(shard)
        await shard.expedite(T, "waits")
        assert await store_items(shard) == before
        assert await where_is(shard, "waits") == "TIMER"


# -- a changed max --------------------------------------------------------------------------------


async def test_a_larger_max_grants_waiting_requests_at_once(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i}", A) for i in range(4)])
        assert await holder_rows(shard) == {QA: ["j0"]}
        world.advance(1)  # (requests due in the same millisecond are ordered by job id)
        await shard.enqueue(limited_job("bigger", ConcurrencyLimit("A", 3)))
        assert shard.queue_info(T, "A")["max_concurrency"] == 3
        assert await holder_rows(shard) == {QA: ["j0", "j1", "j2"]}
        assert await request_rows(shard) == {QA: ["j3", "bigger"]}
        assert {t.job_id for t in await lease(shard)} == {"j0", "j1", "j2"}


async def test_a_smaller_max_grants_nothing_until_holders_drop_below_it(world: World) -> None:
    async with world.open() as shard:
        three = ConcurrencyLimit("A", 3)
        await shard.enqueue_batch([limited_job(f"j{i}", three) for i in range(5)])
        tasks = await lease(shard)
        assert len(tasks) == 3
        world.advance(1)
        await shard.enqueue(limited_job("smaller", A))  # max 1 now
        assert shard.queue_info(T, "A")["max_concurrency"] == 1
        assert await request_rows(shard) == {QA: ["j3", "j4", "smaller"]}
        await shard.report_outcome(report(tasks[0], Success()))
        assert await holder_rows(shard) == {QA: ["j1", "j2"]}
        await shard.report_outcome(report(tasks[1], Success()))
        assert await holder_rows(shard) == {QA: ["j2"]}
        await shard.report_outcome(report(tasks[2], Success()))
        assert await holder_rows(shard) == {QA: ["j3"]}
        assert await request_rows(shard) == {QA: ["j4", "smaller"]}


# -- head of line ---------------------------------------------------------------------------------


async def test_parked_jobs_do_not_block_other_tenants(memory_world: World) -> None:
    async with memory_world.open() as shard:
        await shard.enqueue(limited_job("first", A, tenant="busy"))
        assert (await lease_one(shard)).job_id == "first"
        for chunk in range(5):
            await shard.enqueue_batch(
                [limited_job(f"p{chunk}-{i:04d}", A, tenant="busy") for i in range(1000)]
            )
        assert shard.statistics().parked_requests == 5000
        await shard.enqueue(limited_job("other", A, tenant="quiet"))
        tasks = await shard.lease_tasks("w", "g", 1)
        assert [(t.tenant, t.job_id) for t in tasks] == [("quiet", "other")]
        assert await lease(shard) == []
        info = shard.queue_info("busy", "A")
        assert (info["holders"], info["waiting"]) == (1, 5000)


# -- planted bugs ---------------------------------------------------------------------------------


def plant(world: World, mutation: str) -> None:
    world.runtime.faults = Faults(mutations={mutation})


async def test_over_grant_mutation_exceeds_the_max(memory_world: World) -> None:
    plant(memory_world, "over-grant")
    async with memory_world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i}", A) for i in range(3)])
        rows = await holder_rows(shard)
        assert len(rows[QA]) > 1  # the symptom the invariant check catches
        assert len(await lease(shard)) > 1


async def test_leak_holder_mutation_leaves_a_holder_row(memory_world: World) -> None:
    plant(memory_world, "leak-holder")
    async with memory_world.open() as shard:
        await shard.enqueue_batch([limited_job("j1", A), limited_job("j2", A)])
        task = await lease_one(shard)
        await shard.report_outcome(report(task, Success()))
        # Every job that ever held a slot is terminal, yet a holder row remains ...
        assert await holder_rows(shard) == {QA: ["j1"]}
        # ... and the queue stays full: the next job never gets its slot.
        assert await where_is(shard, "j2") == "PARKED"
        assert await lease(shard) == []

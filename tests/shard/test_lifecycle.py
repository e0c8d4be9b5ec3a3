"""The job lifecycle through a shard: retries and backoff, reaping, cancellation, restart,
expedite, delete, priority order, duplicate ids and outcome reporting (DESIGN §3-§4)."""

from __future__ import annotations

import pytest
import trio.testing

from silo.errors import (
    AlreadyExists,
    Code,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import (
    WORKER_CRASHED,
    AttemptState,
    Cancelled,
    Failure,
    JobStatus,
    OutcomeReport,
    Success,
)
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    keys_mentioning,
    lease,
    lease_one,
    new_job,
    prefixes_of,
    report,
    status_of,
    store_items,
)

S = JobStatus


# -- retries ------------------------------------------------------------------------------------


async def test_retries_with_backoff_until_exhausted(world: World) -> None:
    # retry_count=3: four attempts; delays 1000, 2000, then 4000 capped at max 3000.
    job = new_job("j", retry_count=3, initial_ms=1000, factor=2.0, max_ms=3000)
    expected_delays = [1000, 2000, 3000]
    async with world.open() as shard:
        await shard.enqueue(job)
        for k in range(1, 5):
            task = await lease_one(shard)
            assert task.attempt == k
            world.advance(7)
            failed_at = world.now_ms()
            await shard.report_outcome(report(task, Failure("E_TRANSIENT", b"%d" % k)))
            state = (await shard.get_job(T, "j")).state
            if k == 4:
                break
            assert state.status == S.SCHEDULED
            delay = expected_delays[k - 1]
            assert state.next_attempt_at_ms == failed_at + delay
            assert state.attempt == k + 1
            # Not leasable a millisecond early; leasable when due.
            world.advance(delay - 1)
            assert await lease(shard) == []
            world.advance(1)
        assert state.status == S.FAILED
        assert state.next_attempt_at_ms is None
        view = await shard.get_job(T, "j", include_attempts=True)
        assert [a.attempt for a in view.attempts] == [4, 3, 2, 1]  # newest first
        assert all(a.state == AttemptState.FAILED for a in view.attempts)
        result = await shard.get_result(T, "j")
        assert (result.error_code, result.error_data) == ("E_TRANSIENT", b"4")
        assert await lease(shard) == []
        assert shard.statistics().retried == 3
        await check_counters(shard)


async def test_no_retries_means_one_attempt(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=0))
        await shard.report_outcome(report(await lease_one(shard), Failure("E")))
        assert await status_of(shard, "j") == S.FAILED


async def test_randomized_backoff_stays_within_one_to_two_times_base(world: World) -> None:
    n = 20
    async with world.open() as shard:
        await shard.enqueue_batch(
            [new_job(f"j{i}", retry_count=2, initial_ms=1000, randomize=True) for i in range(n)]
        )
        failed_at = world.now_ms()
        tasks = await lease(shard)
        assert len(tasks) == n
        await shard.report_outcomes([report(t, Failure("E")) for t in tasks])
        delays = [
            (await shard.get_job(T, f"j{i}")).state.next_attempt_at_ms - failed_at
            for i in range(n)
        ]
        assert all(1000 <= d < 2000 for d in delays), delays
        assert len(set(delays)) > 1, "jitter was not applied"
        # Second retry: base 2000.
        world.advance(2000)
        tasks = await lease(shard)
        assert len(tasks) == n
        failed_at = world.now_ms()
        await shard.report_outcomes([report(t, Failure("E")) for t in tasks])
        for i in range(n):
            d = (await shard.get_job(T, f"j{i}")).state.next_attempt_at_ms - failed_at
            assert 2000 <= d < 4000


async def test_zero_backoff_retry_is_due_at_once(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=0))
        await shard.report_outcome(report(await lease_one(shard), Failure("E")))
        assert (await lease_one(shard)).attempt == 2


# -- reaping ------------------------------------------------------------------------------------


async def test_expired_lease_is_reaped_into_a_worker_crashed_retry(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=500))
        task = await lease_one(shard)
        await shard.acknowledge(WORKER, [task.task_id])  # delivered: its expiry is a crash
        assert task.lease_expiry_ms == world.now_ms() + LEASE_MS
        world.advance(LEASE_MS - 1)
        await shard.reap_expired()
        assert await status_of(shard, "j") == S.RUNNING
        world.advance(1)
        reaped_at = world.now_ms()
        await shard.reap_expired()
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.SCHEDULED
        assert view.state.next_attempt_at_ms == reaped_at + 500
        (first,) = view.attempts
        assert first.state == AttemptState.FAILED
        assert first.error_code == WORKER_CRASHED == "WORKER_CRASHED"
        assert first.ended_at_ms == reaped_at
        assert shard.statistics().leases_held == 0
        assert shard.statistics().reaped == 1
        # The retry runs, and its own expiry is reaped into the final failure.
        world.advance(500)
        second = await lease_one(shard)
        assert second.attempt == 2
        await shard.heartbeat(WORKER, second.task_id)  # a heartbeat acknowledges too
        world.advance(LEASE_MS)
        await shard.reap_expired()
        result = await shard.get_result(T, "j")
        assert (result.status, result.error_code) == (S.FAILED, WORKER_CRASHED)
        await check_counters(shard)


async def test_reaped_lease_of_a_cancelled_job_ends_cancelled(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=5))
        task = await lease_one(shard)
        await shard.cancel(T, "j")
        world.advance(LEASE_MS)
        await shard.reap_expired()
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.CANCELLED
        assert [a.state for a in view.attempts] == [AttemptState.CANCELLED]
        assert view.attempts[0].error_code == WORKER_CRASHED  # marks the expired lease
        assert await lease(shard) == []  # no retry
        # The worker's late report is for a lease that no longer exists.
        with pytest.raises(NotFound, match="lease not found"):
            await shard.report_outcome(report(task, Cancelled()))
        await check_counters(shard)


async def test_heartbeat_extends_the_lease(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        world.advance(20_000)
        hb = await shard.heartbeat(WORKER, task.task_id)
        assert not hb.cancelled
        assert hb.lease_expiry_ms == world.now_ms() + LEASE_MS
        world.advance(LEASE_MS - 1)
        await shard.reap_expired()
        assert await status_of(shard, "j") == S.RUNNING
        world.advance(1)
        await shard.reap_expired()
        assert await status_of(shard, "j") == S.FAILED


async def test_background_reaper_and_timer_run_on_their_own(memory_world: World) -> None:
    world = memory_world
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=2000))
        await shard.enqueue(new_job("later", start_at_ms=world.now_ms() + 10_000))
        task = await lease_one(shard)
        await shard.acknowledge(WORKER, [task.task_id])
        assert shard.statistics().scheduled_future_tasks == 1
        world.advance(LEASE_MS)
        await trio.testing.wait_all_tasks_blocked()
        assert await status_of(shard, "j") == S.SCHEDULED  # reaped by the loop, retry queued
        assert shard.statistics().scheduled_future_tasks == 1  # "later" was promoted
        assert shard.statistics().due_tasks_per_task_group == {"g": 1}
        world.advance(2000)
        await trio.testing.wait_all_tasks_blocked()
        assert shard.statistics().scheduled_future_tasks == 0
        assert shard.statistics().due_tasks_per_task_group == {"g": 2}


# -- cancellation -------------------------------------------------------------------------------


async def test_cancel_of_running_job_is_seen_on_heartbeat_then_reported(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=3))
        task = await lease_one(shard)
        assert not (await shard.heartbeat(WORKER, task.task_id)).cancelled
        world.advance(3)
        await shard.cancel(T, "j")
        cancelled_at = world.now_ms()
        assert await status_of(shard, "j") == S.RUNNING
        assert (await shard.heartbeat(WORKER, task.task_id)).cancelled
        await shard.report_outcome(report(task, Cancelled()))
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.CANCELLED
        assert view.attempts[0].state == AttemptState.CANCELLED
        assert (await shard.get_result(T, "j")).cancelled_at_ms == cancelled_at
        assert await lease(shard) == []
        await check_counters(shard)


async def test_success_after_cancel_ends_succeeded(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.cancel(T, "j")
        await shard.report_outcome(report(task, Success(b"done anyway")))
        result = await shard.get_result(T, "j")
        assert (result.status, result.result) == (S.SUCCEEDED, b"done anyway")


async def test_failure_after_cancel_ends_cancelled_without_retry(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=3, initial_ms=0))
        task = await lease_one(shard)
        await shard.cancel(T, "j")
        await shard.report_outcome(report(task, Failure("E")))
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.CANCELLED
        assert view.state.task is None
        assert len(view.attempts) == 1
        assert await lease(shard) == []
        assert shard.statistics().retried == 0


async def test_cancel_of_a_job_waiting_for_retry(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=3))
        await shard.report_outcome(report(await lease_one(shard), Failure("E")))
        assert shard.statistics().scheduled_future_tasks == 1
        await shard.cancel(T, "j")
        assert await status_of(shard, "j") == S.CANCELLED
        assert shard.statistics().scheduled_future_tasks == 0
        world.advance(60_000)
        assert await lease(shard) == []


# -- restart / expedite -------------------------------------------------------------------------


async def test_restart_gives_a_fresh_retry_budget(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=0))
        seen = []
        for _ in range(2):
            task = await lease_one(shard)
            seen.append(task.attempt)
            await shard.report_outcome(report(task, Failure("E")))
        assert await status_of(shard, "j") == S.FAILED
        await shard.restart(T, "j")
        view = await shard.get_job(T, "j")
        assert (view.state.status, view.state.run_attempts) == (S.SCHEDULED, 0)
        for _ in range(2):  # n+1 attempts again
            task = await lease_one(shard)
            seen.append(task.attempt)
            await shard.report_outcome(report(task, Failure("E")))
        assert seen == [1, 2, 3, 4]
        assert await status_of(shard, "j") == S.FAILED
        assert await lease(shard) == []
        view = await shard.get_job(T, "j", include_attempts=True)
        assert [a.attempt for a in view.attempts] == [4, 3, 2, 1]  # newest first
        await check_counters(shard)


async def test_restart_of_cancelled_job_clears_the_cancel(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.cancel(T, "j")
        await shard.report_outcome(report(task, Cancelled()))
        await shard.restart(T, "j")
        assert (await shard.get_job(T, "j")).cancelled_at_ms is None
        task2 = await lease_one(shard)
        assert task2.attempt == 2
        assert not (await shard.heartbeat(WORKER, task2.task_id)).cancelled
        await shard.report_outcome(report(task2, Success(b"ok")))
        assert await status_of(shard, "j") == S.SUCCEEDED


async def test_expedite_makes_a_future_job_due_now_with_the_same_attempt(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", start_at_ms=world.now_ms() + 3_600_000))
        assert await lease(shard) == []
        before = (await shard.get_job(T, "j")).state
        assert before.attempt == 1
        world.advance(10)
        await shard.expedite(T, "j")
        state = (await shard.get_job(T, "j")).state
        assert state.next_attempt_at_ms == world.now_ms()
        assert shard.statistics().scheduled_future_tasks == 0
        task = await lease_one(shard)
        assert task.attempt == 1
        # Expediting again (now RUNNING) is refused.
        with pytest.raises(FailedPrecondition):
            await shard.expedite(T, "j")


async def test_expedite_a_retry_waiting_for_its_backoff(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=60_000))
        await shard.report_outcome(report(await lease_one(shard), Failure("E")))
        assert await lease(shard) == []
        await shard.expedite(T, "j")
        assert (await lease_one(shard)).attempt == 2


# -- delete -------------------------------------------------------------------------------------


async def test_delete_removes_every_row_of_the_job(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("keep", metadata={"color": "red"}))
        world.advance(1)
        await shard.enqueue(
            new_job("j", retry_count=2, initial_ms=0, metadata={"color": "red", "size": "L"})
        )
        # "keep" is leased first (FIFO); fail "j" once, then cancel it while running.
        keep = await lease_one(shard)
        assert keep.job_id == "keep"
        await shard.report_outcome(report(await lease_one(shard), Failure("E")))
        task = await lease_one(shard)
        assert (task.job_id, task.attempt) == ("j", 2)
        await shard.cancel(T, "j")
        await shard.report_outcome(report(task, Failure("E")))
        assert await status_of(shard, "j") == S.CANCELLED
        before = shard.statistics()
        assert prefixes_of(await store_items(shard), "j") == {
            Prefix.JOB, Prefix.STATUS, Prefix.STATUS_INDEX, Prefix.METADATA_INDEX,
            Prefix.ATTEMPT, Prefix.CANCEL, Prefix.JOB_FINGERPRINT,
        }
        keep_rows = sorted(keys_mentioning(await store_items(shard), "keep"))
        await shard.delete(T, "j")
        items = await store_items(shard)
        # Only the attempt high-water mark stays, so a reuse of the id numbers on from 3.
        assert prefixes_of(items, "j") == {Prefix.ATTEMPT_HIGH_WATER}
        assert sorted(keys_mentioning(items, "keep")) == keep_rows
        after = shard.statistics()
        assert after.jobs_total == before.jobs_total - 1
        assert after.jobs_by_status["CANCELLED"] == before.jobs_by_status["CANCELLED"] - 1
        assert after.jobs_by_status["RUNNING"] == 1
        await check_counters(shard)
        with pytest.raises(NotFound):
            await shard.get_result(T, "j")
        # The id is free again.
        await shard.enqueue(new_job("j"))
        assert (await shard.get_job(T, "j", include_attempts=True)).attempts == ()


# -- priority -----------------------------------------------------------------------------------


async def test_lease_order_is_priority_then_due_time(world: World) -> None:
    async with world.open() as shard:
        plan = [("a50", 50), ("b10", 10), ("c50", 50), ("d10", 10), ("f99", 99)]
        for job_id, prio in plan:
            await shard.enqueue(new_job(job_id, priority=prio))
            world.advance(1)
        # A higher-priority job scheduled for later does not jump the queue before it is due.
        await shard.enqueue(new_job("e0", priority=0, start_at_ms=world.now_ms() + 1000))
        order = [(await lease_one(shard)).job_id for _ in range(3)]
        assert order == ["b10", "d10", "a50"]
        world.advance(1000)
        order = [t.job_id for t in await lease(shard)]
        assert order == ["e0", "c50", "f99"]


async def test_batch_lease_returns_priority_order(world: World) -> None:
    async with world.open() as shard:
        ids = []
        for i, prio in enumerate([7, 3, 99, 0, 3, 50, 0]):
            job_id = f"j{i}-p{prio}"
            ids.append((prio, i, job_id))
            await shard.enqueue(new_job(job_id, priority=prio))
            world.advance(1)
        tasks = await lease(shard, 4)
        assert [t.job_id for t in tasks] == [j for _, _, j in sorted(ids)][:4]
        assert [t.job_id for t in await lease(shard)] == [j for _, _, j in sorted(ids)][4:]


async def test_a_retry_keeps_its_priority(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("urgent", priority=0, retry_count=1, initial_ms=100))
        await shard.report_outcome(report(await lease_one(shard), Failure("E")))
        world.advance(50)
        await shard.enqueue(new_job("normal"))
        world.advance(50)
        assert (await lease_one(shard)).job_id == "urgent"


async def test_task_groups_are_separate_queues(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("x", group="emails"))
        await shard.enqueue(new_job("y", group="images"))
        assert [t.job_id for t in await lease(shard, group="images")] == ["y"]
        assert [t.job_id for t in await lease(shard, group="emails")] == ["x"]
        assert await lease(shard, group="g") == []


# -- duplicate ids ------------------------------------------------------------------------------


async def test_duplicate_ids_are_rejected_and_a_failing_batch_writes_nothing(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("a"))
        before = await store_items(shard)
        counters = shard.counters()
        with pytest.raises(AlreadyExists) as info:
            await shard.enqueue(new_job("a", payload=b"another"))
        assert info.value.code == Code.ALREADY_EXISTS
        with pytest.raises(AlreadyExists):
            await shard.enqueue_batch([new_job("b"), new_job("a", priority=1), new_job("c")])
        with pytest.raises(AlreadyExists):
            await shard.enqueue_batch([new_job("d"), new_job("d")])
        assert await store_items(shard) == before
        assert shard.counters() == counters
        for job_id in "bcd":
            with pytest.raises(NotFound):
                await shard.get_job(T, job_id)
        # The same id in another tenant is a different job.
        await shard.enqueue(new_job("a", tenant="other"))
        assert shard.statistics().jobs_total == 2
        await check_counters(shard)


async def test_generated_ids_are_unique(world: World) -> None:
    async with world.open() as shard:
        ids = await shard.enqueue_batch([new_job() for _ in range(50)])
        ids += [await shard.enqueue(new_job()) for _ in range(10)]
        assert len(set(ids)) == 60
        assert shard.statistics().jobs_total == 60


# -- heartbeats and reports ---------------------------------------------------------------------


async def test_wrong_worker_is_a_lease_owner_mismatch(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        with pytest.raises(FailedPrecondition, match="lease owner mismatch"):
            await shard.heartbeat("intruder", task.task_id)
        with pytest.raises(FailedPrecondition, match="lease owner mismatch"):
            await shard.report_outcome(report(task, Success(), worker="intruder"))
        assert await status_of(shard, "j") == S.RUNNING
        await shard.report_outcome(report(task, Success()))
        # Also after the attempt ended.
        with pytest.raises(FailedPrecondition, match="lease owner mismatch"):
            await shard.report_outcome(report(task, Success(), worker="intruder"))


async def test_report_and_heartbeat_after_reap_are_lease_not_found(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1))
        task = await lease_one(shard)
        world.advance(LEASE_MS)
        await shard.reap_expired()
        for outcome in (Success(b"late"), Failure("E"), Failure(WORKER_CRASHED), Cancelled()):
            with pytest.raises(NotFound, match="lease not found") as info:
                await shard.report_outcome(report(task, outcome))
            assert info.value.code == Code.NOT_FOUND
        bare = OutcomeReport(WORKER, task.task_id, Success())
        with pytest.raises(NotFound, match="lease not found"):
            await shard.report_outcome(bare)
        with pytest.raises(NotFound, match="lease not found"):
            await shard.heartbeat(WORKER, task.task_id)
        assert await status_of(shard, "j") == S.SCHEDULED


async def test_unknown_task_is_lease_not_found(world: World) -> None:
    async with world.open() as shard:
        with pytest.raises(NotFound, match="lease not found"):
            await shard.heartbeat(WORKER, "t-unknown")
        with pytest.raises(NotFound, match="lease not found"):
            await shard.report_outcome(OutcomeReport(WORKER, "t-unknown", Success()))


@pytest.mark.parametrize(
    "outcome, status",
    [(Success(b"r"), S.SUCCEEDED), (Failure("E", b"d"), S.SCHEDULED),
     (Cancelled(), S.CANCELLED)],
    ids=["success", "failure", "cancelled"],
)
async def test_repeated_identical_report_is_ok(world: World, outcome, status) -> None:  # noqa: ANN001
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1))
        task = await lease_one(shard)
        await shard.report_outcome(report(task, outcome))
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == status
        writes = shard.statistics().synced_writes
        world.advance(100)
        await shard.report_outcome(report(task, outcome))  # a retried RPC
        assert await shard.get_job(T, "j", include_attempts=True) == view
        assert shard.statistics().synced_writes == writes
        # A different outcome for the same, already ended attempt is an error.
        others = [o for o in (Success(b"r"), Failure("E", b"d"), Cancelled())
                  if type(o) is not type(outcome)]
        for other in others:
            with pytest.raises(NotFound, match="already ended"):
                await shard.report_outcome(report(task, other))
        assert await shard.get_job(T, "j", include_attempts=True) == view
        await check_counters(shard)


async def test_report_outcomes_batch_with_mixed_entries(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue_batch([new_job(f"j{i}", retry_count=0) for i in range(5)])
        t = await lease(shard)
        assert [x.job_id for x in t] == [f"j{i}" for i in range(5)]
        big = b"x" * (shard.config.limits.result_max_bytes + 1)
        results = await shard.report_outcomes([
            report(t[0], Success(b"ok")),
            report(t[1], Success(), worker="intruder"),
            OutcomeReport(WORKER, "t-unknown", Success()),
            report(t[2], Failure("E_X", b"d")),
            report(t[3], Success(big)),
            report(t[0], Success(b"ok")),  # the same report twice in one batch
            report(t[4], Failure("")),  # empty error code
            report(t[2], Success()),  # contradicts the entry above
        ])
        kinds = [type(r).__name__ if r is not None else None for r in results]
        assert kinds == [None, "FailedPrecondition", "NotFound", None, "InvalidArgument", None,
                         "InvalidArgument", "NotFound"]
        assert "result_max_bytes" in results[4].message
        assert [await status_of(shard, f"j{i}") for i in range(5)] == [
            S.SUCCEEDED, S.RUNNING, S.FAILED, S.RUNNING, S.RUNNING,
        ]
        assert shard.statistics().leases_held == 3
        await check_counters(shard)


async def test_attempt_records_describe_each_hand_out(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=1, initial_ms=0))
        started = world.now_ms()
        t1 = await lease_one(shard, worker="w-a")
        world.advance(10)
        await shard.report_outcome(report(t1, Failure("E1", b"x"), worker="w-a"))
        t2 = await lease_one(shard, worker="w-b")
        world.advance(10)
        await shard.report_outcome(report(t2, Success(b"r"), worker="w-b"))
        a2, a1 = (await shard.get_job(T, "j", include_attempts=True)).attempts  # newest first
        assert (a1.attempt, a1.task_id, a1.worker_id, a1.state) == (
            1, t1.task_id, "w-a", AttemptState.FAILED)
        assert (a1.started_at_ms, a1.ended_at_ms, a1.error_code, a1.error_data) == (
            started, started + 10, "E1", b"x")
        assert (a2.attempt, a2.worker_id, a2.state, a2.result) == (
            2, "w-b", AttemptState.SUCCEEDED, b"r")
        assert t1.task_id != t2.task_id
        assert t1.payload == b"payload"


async def test_bad_outcome_type_is_invalid(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        with pytest.raises(InvalidArgument):
            await shard.report_outcome(report(task, "success"))  # type: ignore[arg-type]
        assert await status_of(shard, "j") == S.RUNNING

"""Delivery through a shard (DESIGN §4 "Delivery"): a lease is unacknowledged until the worker
acknowledges it (an ack on a later lease call, a heartbeat not marked ``waiting`` or a report);
one that expires unacknowledged is undelivered and re-queued without charging the retry budget,
at most ``MAX_UNDELIVERED`` times per run; LeaseTasks sizes its reply while it picks tasks."""

from __future__ import annotations

import msgpack
import pytest

from silo.model import DEFAULT_TENANT as T
from silo.model import (
    MAX_UNDELIVERED,
    TASK_TOO_LARGE,
    WORKER_CRASHED,
    AttemptState,
    ConcurrencyLimit,
    JobStatus,
    Success,
)
from silo.reply_size import task_reply_bytes
from tests.shard.support import (
    LEASE_MS,
    WORKER,
    World,
    check_counters,
    holder_rows,
    lease,
    lease_one,
    limited_job,
    new_job,
    report,
    request_rows,
    status_of,
)

S = JobStatus


async def _expire(world: World, shard) -> None:  # noqa: ANN001
    world.advance(LEASE_MS)
    await shard.reap_expired()


# -- undelivered leases ---------------------------------------------------------------------


async def test_unacked_expired_lease_is_requeued_with_its_retry_budget(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=0))
        first = await lease_one(shard)  # never acknowledged: the reply may never have arrived
        await _expire(world, shard)
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.SCHEDULED
        assert view.state.undelivered == 1
        assert view.state.next_attempt_at_ms == world.now_ms()  # no backoff
        (att,) = view.attempts
        assert (att.attempt, att.task_id, att.state) == (1, first.task_id, AttemptState.UNDELIVERED)
        assert att.error_code is None
        # Re-queued with a new attempt number and task id; retry_count 0 still allows one run.
        second = await lease_one(shard)
        assert second.attempt == 2 and second.task_id != first.task_id
        await shard.report_outcome(report(second, Success(b"ok")))
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.SUCCEEDED
        assert [a.state for a in view.attempts] == [AttemptState.SUCCEEDED,  # newest first
                                                    AttemptState.UNDELIVERED]
        await check_counters(shard)


async def test_expiry_after_max_undelivered_is_worker_crashed(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=0))
        for n in range(1, MAX_UNDELIVERED + 1):
            await lease_one(shard)
            await _expire(world, shard)
            assert await status_of(shard, "j") == S.SCHEDULED, n
        await lease_one(shard)
        await _expire(world, shard)
        result = await shard.get_result(T, "j")
        assert (result.status, result.error_code) == (S.FAILED, WORKER_CRASHED)
        view = await shard.get_job(T, "j", include_attempts=True)
        assert [a.state for a in view.attempts] == (
            [AttemptState.FAILED] + [AttemptState.UNDELIVERED] * MAX_UNDELIVERED)  # newest first
        await check_counters(shard)


async def test_acked_lease_that_expires_is_worker_crashed(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("a"))
        await shard.enqueue(new_job("b"))
        task = await lease_one(shard)
        # The worker's next lease call carries the ack (and leases the next task).
        (other,) = await shard.lease_tasks(WORKER, "g", 1, acks=[task.task_id])
        await shard.heartbeat(WORKER, other.task_id)  # a heartbeat acknowledges too
        await _expire(world, shard)
        for job_id in ("a", "b"):
            result = await shard.get_result(T, job_id)
            assert (result.status, result.error_code) == (S.FAILED, WORKER_CRASHED), job_id
        await check_counters(shard)


async def test_a_waiting_heartbeat_extends_without_acknowledging(world: World) -> None:
    """A worker holding a task unstarted (prefetched) heartbeats it ``waiting``: the lease
    lives past its first expiry, but when it finally lapses (the worker was killed) it is
    undelivered, so a job with retry_count 0 still gets its one run."""
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=0))
        first = await lease_one(shard)
        for _ in range(3):  # three lease lengths, kept alive by waiting heartbeats
            world.advance(LEASE_MS // 2)
            result = await shard.heartbeat(WORKER, first.task_id, waiting=True)
            assert result.lease_expiry_ms == world.now_ms() + LEASE_MS
            assert await shard.reap_expired() == 0
        assert await status_of(shard, "j") == S.RUNNING
        await _expire(world, shard)
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.SCHEDULED and view.state.undelivered == 1
        assert view.state.run_attempts == 0
        second = await lease_one(shard)
        await shard.report_outcome(report(second, Success(b"ok")))
        assert await status_of(shard, "j") == S.SUCCEEDED
        await check_counters(shard)


async def test_a_waiting_heartbeat_leaves_an_acknowledged_lease_acknowledged(
    world: World,
) -> None:
    """Only a heartbeat without ``waiting`` (what an older worker sends for every task)
    acknowledges; a ``waiting`` one after it does not take the acknowledgement back."""
    async with world.open() as shard:
        await shard.enqueue(new_job("a"))
        await shard.enqueue(new_job("b"))
        a, b = await lease(shard, 2)
        await shard.heartbeat(WORKER, a.task_id)  # started: acknowledged
        await shard.heartbeat(WORKER, a.task_id, waiting=True)
        await shard.acknowledge(WORKER, [b.task_id])
        await shard.heartbeat(WORKER, b.task_id, waiting=True)
        await _expire(world, shard)
        for job_id in ("a", "b"):
            result = await shard.get_result(T, job_id)
            assert (result.status, result.error_code) == (S.FAILED, WORKER_CRASHED), job_id
        await check_counters(shard)


async def test_ack_without_tasks_to_lease_and_standalone_ack(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("a"))
        await shard.enqueue(new_job("b"))
        a, b = await lease(shard, 2)
        assert await lease(shard) == []
        assert await shard.lease_tasks(WORKER, "g", 5, acks=[a.task_id]) == []
        await shard.acknowledge(WORKER, [b.task_id])
        await _expire(world, shard)
        for job_id in ("a", "b"):
            assert (await shard.get_result(T, job_id)).error_code == WORKER_CRASHED


async def test_acks_of_another_worker_or_unknown_tasks_are_ignored(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.acknowledge("someone-else", [task.task_id, "t-no-such-task"])
        assert await shard.lease_tasks("someone-else", "g", 1, acks=[task.task_id]) == []
        await _expire(world, shard)
        assert await status_of(shard, "j") == S.SCHEDULED  # still undelivered


async def test_acks_ride_in_the_lease_batch(memory_world: World) -> None:
    """An ack costs no synced write of its own: a lease call with acks writes once."""
    async with memory_world.open() as shard:
        for i in range(3):
            await shard.enqueue(new_job(f"j{i}"))
        first = await lease_one(shard)
        before = shard.statistics().synced_writes
        await shard.lease_tasks(WORKER, "g", 1, acks=[first.task_id])
        assert shard.statistics().synced_writes == before + 1


async def test_report_after_undelivered_is_refused(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await _expire(world, shard)
        from silo.errors import NotFound

        with pytest.raises(NotFound, match="lease not found"):
            await shard.report_outcome(report(task, Success(b"late")))


async def test_unacked_expiry_of_a_cancelled_job_ends_cancelled(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j", retry_count=3))
        await lease_one(shard)
        await shard.cancel(T, "j")
        await _expire(world, shard)
        view = await shard.get_job(T, "j", include_attempts=True)
        assert view.state.status == S.CANCELLED
        assert [a.state for a in view.attempts] == [AttemptState.CANCELLED]
        assert await lease(shard) == []
        await check_counters(shard)


async def test_restart_resets_the_undelivered_count(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        for _ in range(MAX_UNDELIVERED + 1):
            await lease_one(shard)
            await _expire(world, shard)
        assert await status_of(shard, "j") == S.FAILED
        await shard.restart(T, "j")
        assert (await shard.get_job(T, "j")).state.undelivered == 0
        await lease_one(shard)
        await _expire(world, shard)
        assert await status_of(shard, "j") == S.SCHEDULED
        await check_counters(shard)


async def test_undelivered_attempt_releases_and_reacquires_its_limits(world: World) -> None:
    limit = ConcurrencyLimit("A", 1)
    async with world.open() as shard:
        await shard.enqueue(limited_job("first", limit))
        await shard.enqueue(limited_job("second", limit))
        await lease_one(shard)
        assert await holder_rows(shard) == {(T, "A"): ["first"]}
        await _expire(world, shard)
        # The slot went to the job parked first; the undelivered job queues behind it.
        assert await holder_rows(shard) == {(T, "A"): ["second"]}
        assert await request_rows(shard) == {(T, "A"): ["first"]}
        second = await lease_one(shard)
        assert second.job_id == "second"
        await shard.report_outcome(report(second, Success()))
        again = await lease_one(shard)
        assert (again.job_id, again.attempt) == ("first", 2)
        await shard.report_outcome(report(again, Success()))
        assert await holder_rows(shard) == {}
        await check_counters(shard)


async def test_acknowledgement_survives_a_reopen(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("j"))
        task = await lease_one(shard)
        await shard.acknowledge(WORKER, [task.task_id])
    async with world.open() as shard:
        await _expire(world, shard)
        assert (await shard.get_result(T, "j")).error_code == WORKER_CRASHED


# -- the reply byte budget ------------------------------------------------------------------


async def test_lease_stops_before_the_reply_budget_and_leaves_the_rest_queued(
    world: World,
) -> None:
    async with world.open() as shard:
        for i in range(5):
            await shard.enqueue(new_job(f"j{i}", payload=b"x" * 1000))
        (probe,) = await shard.lease_tasks(WORKER, "g", 1)
        size = task_reply_bytes(probe)
        budget = 2 * size + size // 2  # room for two more
        tasks = await shard.lease_tasks(WORKER, "g", 10, max_reply_bytes=budget)
        assert len(tasks) == 2
        assert sum(task_reply_bytes(t) for t in tasks) <= budget
        assert shard.statistics().due_tasks_per_task_group == {"g": 2}
        # What an earlier shard of the same reply used counts against the budget.
        tasks = await shard.lease_tasks(WORKER, "g", 10, max_reply_bytes=budget,
                                        reply_bytes_used=2 * size)
        assert tasks == []
        tasks = await shard.lease_tasks(WORKER, "g", 10, max_reply_bytes=budget)
        assert len(tasks) == 2


async def test_an_over_large_task_goes_alone(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("small", payload=b"s", priority=1))
        await shard.enqueue(new_job("big", payload=b"b" * 5000, priority=2))
        await shard.enqueue(new_job("small2", payload=b"s", priority=3))
        budget = 5300  # the big task (about 5150 bytes) fits alone, not behind 200 bytes
        (small,) = await shard.lease_tasks(WORKER, "g", 10, max_reply_bytes=budget,
                                           reply_bytes_used=budget - 500)
        assert small.job_id == "small"
        first = await shard.lease_tasks(WORKER, "g", 10, max_reply_bytes=budget,
                                        reply_bytes_used=200)
        assert first == []  # the big one does not fit behind what is already in the reply
        (big,) = await shard.lease_tasks(WORKER, "g", 1, max_reply_bytes=budget)
        assert big.job_id == "big"


async def test_a_task_that_alone_exceeds_the_reply_cap_fails_task_too_large(
    world: World,
) -> None:
    async with world.open() as shard:
        await shard.enqueue(new_job("huge", payload=b"h" * 4000, retry_count=5, priority=1))
        await shard.enqueue(new_job("fine", payload=b"f", priority=2))
        tasks = await shard.lease_tasks(WORKER, "g", 10, max_reply_bytes=2000)
        assert [t.job_id for t in tasks] == ["fine"]
        view = await shard.get_job(T, "huge", include_attempts=True)
        assert view.state.status == S.FAILED
        result = await shard.get_result(T, "huge")
        assert result.error_code == TASK_TOO_LARGE
        message = msgpack.unpackb(result.error_data)
        assert "2000" in message and "max_message_bytes" in message
        assert [a.state for a in view.attempts] == [AttemptState.FAILED]
        assert shard.statistics().leases_held == 1
        await check_counters(shard)

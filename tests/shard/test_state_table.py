"""Every cell of the DESIGN §3 state table: cancel / restart / expedite / delete / result on a job
that is SCHEDULED, RUNNING, SUCCEEDED, FAILED or CANCELLED."""

from __future__ import annotations

import pytest

from silo.errors import Code, FailedPrecondition, NotFound
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import Cancelled, Failure, JobStatus, OutcomeReport, Success
from silo.shard import JobShard
from silo.shard.transitions import ALLOWED, LEGAL_TRANSITIONS, Operation
from tests.shard.support import (
    World,
    check_counters,
    lease,
    lease_one,
    new_job,
    prefixes_of,
    report,
    status_of,
    store_items,
)

S = JobStatus
OPS = ["cancel", "restart", "expedite", "delete", "result"]
STATUSES = [S.SCHEDULED, S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED]

# The table, as expected outcomes: "ok" or FAILED_PRECONDITION.
TABLE = {
    "cancel": {S.SCHEDULED: "ok", S.RUNNING: "ok"},
    "restart": {S.FAILED: "ok", S.CANCELLED: "ok"},
    "expedite": {S.SCHEDULED: "ok"},
    "delete": {S.SUCCEEDED: "ok", S.FAILED: "ok", S.CANCELLED: "ok"},
    "result": {S.SUCCEEDED: "ok", S.FAILED: "ok", S.CANCELLED: "ok"},
}


async def make_job_in(world: World, shard: JobShard, status: JobStatus, job_id: str = "j") -> None:
    """Bring a fresh job into ``status`` through the public operations."""
    await shard.enqueue(new_job(job_id, metadata={"color": "red"}))
    if status == S.SCHEDULED:
        return
    if status == S.CANCELLED:
        await shard.cancel(T, job_id)
        return
    task = await lease_one(shard)
    world.advance(5)
    if status == S.SUCCEEDED:
        await shard.report_outcome(report(task, Success(b"the result")))
    elif status == S.FAILED:
        await shard.report_outcome(report(task, Failure("E_BOOM", b"error data")))
    assert await status_of(shard, job_id) == status


async def do(shard: JobShard, op: str, job_id: str = "j"):  # noqa: ANN201
    if op == "result":
        return await shard.get_result(T, job_id)
    return await getattr(shard, op)(T, job_id)


@pytest.mark.parametrize("status", STATUSES, ids=lambda s: s.name)
@pytest.mark.parametrize("op", OPS)
async def test_state_table_cell(world: World, op: str, status: JobStatus) -> None:
    async with world.open() as shard:
        await make_job_in(world, shard, status)
        before = await shard.get_job(T, "j", include_attempts=True)
        world.advance(10)
        if TABLE[op].get(status) != "ok":
            with pytest.raises(FailedPrecondition) as info:
                await do(shard, op)
            assert info.value.code == Code.FAILED_PRECONDITION
            assert status.name in info.value.message
            # A refused operation changes nothing.
            assert await shard.get_job(T, "j", include_attempts=True) == before
            await check_counters(shard)
            return
        result = await do(shard, op)
        await check_allowed_outcome(world, shard, op, status, before, result)
        await check_counters(shard)


async def check_allowed_outcome(world, shard, op, status, before, result) -> None:  # noqa: ANN001
    now = world.now_ms()
    if op == "cancel":
        view = await shard.get_job(T, "j")
        assert view.cancelled_at_ms == now
        if status == S.SCHEDULED:
            assert view.state.status == S.CANCELLED
            assert view.state.task is None
            # Task removed: nothing to lease, no queue or timer row left.
            assert await lease(shard) == []
            assert not prefixes_of(await store_items(shard), "j") & {Prefix.READY, Prefix.TIMER}
        else:
            # Running: only the flag is set; the worker learns on its next heartbeat.
            assert view.state.status == S.RUNNING
            task_id = before.state.lease_task_id
            assert (await shard.heartbeat("worker-1", task_id)).cancelled
    elif op == "restart":
        view = await shard.get_job(T, "j")
        assert view.state.status == S.SCHEDULED
        assert view.cancelled_at_ms is None
        assert view.state.run_attempts == 0
        task = await lease_one(shard)
        assert task.attempt == before.state.attempt + 1
    elif op == "expedite":
        # Already due: accepted as a no-op (the future case is in test_lifecycle.py).
        assert await shard.get_job(T, "j", include_attempts=True) == before
        assert (await lease_one(shard)).attempt == before.state.attempt
    elif op == "delete":
        with pytest.raises(NotFound):
            await shard.get_job(T, "j")
        # Only the attempt high-water mark of the id stays.
        assert prefixes_of(await store_items(shard), "j") == {Prefix.ATTEMPT_HIGH_WATER}
        assert shard.statistics().jobs_total == 0
    elif op == "result":
        assert result.status == status
        if status == S.SUCCEEDED:
            assert result.result == b"the result"
            assert result.error_code is None
        elif status == S.FAILED:
            assert (result.error_code, result.error_data) == ("E_BOOM", b"error data")
            assert result.result is None
        else:
            assert result.cancelled_at_ms == before.cancelled_at_ms is not None


@pytest.mark.parametrize("op", [*OPS, "get_job"])
async def test_operations_on_a_missing_job_are_not_found(memory_world: World, op: str) -> None:
    async with memory_world.open() as shard:
        with pytest.raises(NotFound, match="job not found"):
            if op == "get_job":
                await shard.get_job(T, "nope")
            else:
                await do(shard, op, "nope")


def test_transition_rules_match_the_design_table() -> None:
    allowed = {op.value: {s for s in ALLOWED[op]} for op in Operation}
    assert allowed == {op: set(cells) for op, cells in TABLE.items()}
    # Terminal states are left only by restart (FAILED/CANCELLED -> SCHEDULED).
    for old, new in LEGAL_TRANSITIONS:
        if old is not None and old.terminal:
            assert new == S.SCHEDULED and old != S.SUCCEEDED


async def test_cancel_then_worker_reports_cancelled(world: World) -> None:
    async with world.open() as shard:
        await make_job_in(world, shard, S.RUNNING)
        view = await shard.get_job(T, "j")
        await shard.cancel(T, "j")
        # A second cancel of a running job that is already flagged is still allowed.
        await shard.cancel(T, "j")
        task_id = view.state.lease_task_id
        hb = await shard.heartbeat("worker-1", task_id)
        assert hb.cancelled
        await shard.report_outcome(
            OutcomeReport("worker-1", task_id, Cancelled(), T, "j", view.state.attempt)
        )
        assert await status_of(shard, "j") == S.CANCELLED
        # Now terminal: cancel is refused.
        with pytest.raises(FailedPrecondition):
            await shard.cancel(T, "j")


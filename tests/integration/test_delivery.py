"""Delivery over real gRPC (DESIGN §4 "Delivery"): LeaseTasks never commits a lease it cannot
send, and a lease that expires before the worker acknowledged it is re-queued without charging
the job's retry budget."""

from __future__ import annotations

import trio

from silo.client import SiloClient, TaskContext, Worker
from silo.wire import pb
from tests.integration.conftest import StartNode
from tests.integration.support import Raw, wait_until

PAYLOAD = b"x" * (900 * 1024)
LEASE_MS = 500


async def test_lease_reply_is_sized_to_the_message_cap(start_node: StartNode) -> None:
    """40 tasks of 900 KiB do not fit in one 16 MiB reply: LeaseTasks hands out what fits and
    leaves the rest queued, so every job still runs exactly once."""
    node = await start_node()
    assert node.config.max_message_bytes == 16 * 1024 * 1024
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        ids = [await raw.enqueue("big", PAYLOAD) for _ in range(40)]
        first = await raw.lease("w1", "big", max_tasks=40)
        assert 1 <= len(first.tasks) <= 17
        for task in first.tasks:
            await raw.report(task, "w1")
        queued = [await raw.get(i) for i in ids]
        assert sum(j.status == pb.JobStatus.SCHEDULED for j in queued) == 40 - len(first.tasks)

        seen: list[str] = []

        async def handler(ctx: TaskContext) -> None:
            assert len(ctx.payload) == len(PAYLOAD)
            seen.append(ctx.job_id)

        worker = Worker(client, "big", handler, worker_id="w2", max_concurrent_tasks=40,
                        lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await wait_until(lambda: len(seen) >= 40 - len(first.tasks), timeout=60,
                             what="the worker to run the rest")
            worker.stop(10)
        for job_id in ids:
            job = await raw.get(job_id, attempts=True)
            assert job.status == pb.JobStatus.SUCCEEDED, job_id
            assert [a.state for a in job.attempts] == [pb.AttemptState.SUCCEEDED], job_id


async def test_unacked_lease_that_expires_is_requeued_and_later_succeeds(
    start_node: StartNode,
) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        job_id = await raw.enqueue("g", "work", retry=pb.RetryPolicy(retry_count=0))
        lost = await raw.lease_one()  # as if the reply never reached the worker

        async def requeued() -> bool:
            return (await raw.get(job_id)).undelivered_count == 1

        await wait_until(requeued, timeout=10, what="the undelivered lease to be re-queued")
        job = await raw.get(job_id, attempts=True)
        assert job.status == pb.JobStatus.SCHEDULED
        assert [(a.attempt, a.state) for a in job.attempts] == [
            (1, pb.AttemptState.UNDELIVERED)]
        task = await raw.lease_one()
        assert task.attempt == 2 and task.task_id != lost.task_id
        await raw.heartbeat(task)
        await raw.report(task)
        job = await raw.get(job_id, attempts=True)
        assert job.status == pb.JobStatus.SUCCEEDED
        assert [a.state for a in job.attempts] == [pb.AttemptState.SUCCEEDED,  # newest first
                                                   pb.AttemptState.UNDELIVERED]
        assert job.undelivered_count == 1


async def test_acked_lease_that_expires_is_worker_crashed(start_node: StartNode) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        job_id = await raw.enqueue("g", "work", retry=pb.RetryPolicy(retry_count=0))
        task = await raw.lease_one()
        # The worker acknowledges what it received on its next LeaseTasks (nothing to lease).
        assert (await raw.lease(max_tasks=5, acks=[task])).tasks == []

        async def failed() -> bool:
            return (await raw.get(job_id)).status == pb.JobStatus.FAILED

        await wait_until(failed, timeout=10, what="the acknowledged lease to be reaped")
        result = await raw.result(job_id)
        assert result.error_code == "WORKER_CRASHED"
        job = await raw.get(job_id, attempts=True)
        assert job.undelivered_count == 0
        assert [a.state for a in job.attempts] == [pb.AttemptState.FAILED]

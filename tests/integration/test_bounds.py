"""Bounded inputs over real gRPC: an oversized id is refused with a short INVALID_ARGUMENT that
names the limit, and the client's HTTP/2 connection keeps serving every other call."""

from __future__ import annotations

import pytest
import trio

from silo.client import SiloClient
from silo.errors import Code
from silo.shard.validation import ShardLimits
from silo.wire import pb
from tests.integration.conftest import StartNode
from tests.integration.support import Raw, expect_error

BIG = "x" * (64 * 1024)
MESSAGE_MAX_CHARS = 1024


async def test_huge_task_id_is_refused_short_and_the_connection_survives(raw: Raw) -> None:
    job_id = await raw.enqueue("g", {"n": 1})
    shard = await raw.shard()

    async def huge_heartbeat() -> None:
        exc = await expect_error(
            raw("Heartbeat", pb.HeartbeatRequest(shard=shard, worker_id="w1", task_id=BIG),
                pb.HeartbeatResponse),
            Code.INVALID_ARGUMENT, "task_id_max_chars",
        )
        assert len(exc.message) < MESSAGE_MAX_CHARS

    ok: list[pb.Job] = []

    async def normal_get() -> None:
        ok.append(await raw.get(job_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(huge_heartbeat)
        nursery.start_soon(normal_get)
    assert ok and ok[0].id == job_id
    # ...and the same client keeps working afterwards.
    await raw.alive()
    assert (await raw.get(job_id)).id == job_id


async def test_huge_ids_in_every_request_are_refused_short(raw: Raw) -> None:
    shard = await raw.shard()
    task = pb.Task(shard=shard, task_id=BIG, tenant="default", job_id=BIG, attempt=1)
    calls = [
        (raw("GetJob", pb.GetJobRequest(job=pb.JobRef(shard=shard, tenant="default", id=BIG)),
             pb.GetJobResponse), "job_id_max_chars"),
        (raw("GetQueue", pb.GetQueueRequest(shard=shard, tenant="default", key=BIG),
             pb.GetQueueResponse), "limit_key_max_chars"),
        (raw("ReportOutcome", pb.ReportOutcomeRequest(outcome=pb.Outcome(
            shard=shard, worker_id="w1", task_id=BIG, tenant="default", job_id="j", attempt=1,
            success=b"\xc0")), pb.ReportOutcomeResponse), "task_id_max_chars"),
        (raw("ReportRefresh", pb.ReportRefreshRequest(shard=shard, worker_id="w1", task_id=BIG,
                                                      new_max=1), pb.ReportRefreshResponse),
         "task_id_max_chars"),
        (raw("Heartbeat", pb.HeartbeatRequest(shard=shard, worker_id=BIG, task_id="t"),
             pb.HeartbeatResponse), "worker_id_max_chars"),
        (raw("LeaseTasks", pb.LeaseTasksRequest(worker_id="w1", task_group=BIG, max_tasks=1,
                                                all_shards=True), pb.LeaseTasksResponse),
         "task_group_max_chars"),
        (raw("Enqueue", pb.EnqueueRequest(shard=shard, job=pb.JobSpec(
            tenant="default", id=BIG, task_group="g", payload=b"\xc0")), pb.EnqueueResponse),
         "job_id_max_chars"),
        (raw("GetJob", pb.GetJobRequest(job=pb.JobRef(shard=shard, tenant=BIG, id="j")),
             pb.GetJobResponse), "tenant_max_chars"),
    ]
    del task
    for call, limit in calls:
        exc = await expect_error(call, Code.INVALID_ARGUMENT, limit)
        assert len(exc.message) < MESSAGE_MAX_CHARS, (limit, len(exc.message))
    await raw.alive()


async def fail_attempts(raw: Raw, n: int) -> None:
    for _ in range(n):
        task = await raw.lease_one()
        await raw.report(task, failure=pb.Failure(code="E", data=b"\xc0"))


async def test_get_job_pages_attempts_newest_first(raw: Raw, client: SiloClient) -> None:
    job_id = await raw.enqueue("g", 1, retry=pb.RetryPolicy(retry_count=9, backoff_factor=1.0),
                               has_retry=True)
    await fail_attempts(raw, 10)
    ref = await raw.ref(job_id)
    resp = await raw("GetJob", pb.GetJobRequest(job=ref, include_attempts=True, max_attempts=4),
                     pb.GetJobResponse)
    assert resp.job is not None and resp.job.attempts_total == 10
    assert [a.attempt for a in resp.job.attempts] == [10, 9, 8, 7]
    resp = await raw("GetJob", pb.GetJobRequest(job=ref, include_attempts=True, max_attempts=4,
                                                attempts_before=7), pb.GetJobResponse)
    assert resp.job is not None and [a.attempt for a in resp.job.attempts] == [6, 5, 4, 3]
    await expect_error(
        raw("GetJob", pb.GetJobRequest(job=ref, include_attempts=True, max_attempts=5000),
            pb.GetJobResponse),
        Code.INVALID_ARGUMENT, "get_job_attempts_max",
    )
    job = await client.job(job_id).get(attempts=3, attempts_before=3)
    assert job.attempts is not None and [a.attempt for a in job.attempts] == [2, 1]
    assert job.attempts_total == 10
    job = await client.job(job_id).get(attempts=True)
    assert job.attempts is not None and len(job.attempts) == 10


async def test_restart_refused_past_max_attempts_per_job(start_node: StartNode) -> None:
    node = await start_node(limits=ShardLimits(max_attempts_per_job=6))
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        await expect_error(
            raw("Enqueue", pb.EnqueueRequest(shard=await raw.shard(), job=pb.JobSpec(
                tenant="default", id="r", task_group="g", payload=b"\xc0",
                retry=pb.RetryPolicy(retry_count=5, backoff_factor=1.0), has_retry=True)),
                pb.EnqueueResponse),
            Code.INVALID_ARGUMENT, "max_attempts_per_job",
        )
        job_id = await raw.enqueue("g", 1)
        for _ in range(3):
            await fail_attempts(raw, 1)
            try:
                await raw.action("RestartJob", job_id)
            except Exception as exc:  # 3 attempts + a run of up to 4 would pass 6
                assert getattr(exc, "code", None) == Code.FAILED_PRECONDITION, exc
                assert "max_attempts_per_job" in str(exc)
                break
        else:
            pytest.fail("restart was never refused")
        assert (await raw.get(job_id)).attempts_total == 3

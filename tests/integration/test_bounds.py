"""Bounded inputs over real gRPC: an oversized id is refused with a short INVALID_ARGUMENT that
names the limit, and the client's HTTP/2 connection keeps serving every other call."""

from __future__ import annotations

import trio

from silo.errors import Code
from silo.wire import pb
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

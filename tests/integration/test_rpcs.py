"""Every RPC of silo.v1.Silo over real gRPC on 127.0.0.1, with its error paths.

Each test talks to an in-process node through single-attempt calls (no client retries), checks
the exact status code and that the message says what went wrong, and after every rejected
request checks that the server still serves.
"""

from __future__ import annotations

import time

import trio

from silo.client import SiloClient, pack, unpack
from silo.errors import Code
from silo.shard.validation import MIB, ShardLimits
from silo.wire import pb
from tests.integration.conftest import StartNode
from tests.integration.support import Node, Raw, expect_error, outcome_for

S = pb.JobStatus
A = pb.AttemptState


def now_ms() -> int:
    return int(time.time() * 1000)


async def tenants_by_shard(client: SiloClient, wanted: int) -> dict[int, str]:
    """One tenant name per shard, for ``wanted`` distinct shards."""
    found: dict[int, str] = {}
    for i in range(500):
        tenant = f"tenant-{i}"
        found.setdefault(await client.shard_for(tenant), tenant)
        if len(found) >= wanted:
            return found
    raise AssertionError(f"only found tenants for shards {sorted(found)}")


# -- happy paths ------------------------------------------------------------------------------


async def test_enqueue_and_get_job(raw: Raw) -> None:
    shard = await raw.shard("acme")
    spec = pb.JobSpec(
        tenant="acme", id="job-1", task_group="emails", payload=pack({"to": "a@b.c"}),
        priority=7, has_priority=True,
        retry=pb.RetryPolicy(retry_count=3, initial_backoff_ms=100, max_backoff_ms=1000,
                             backoff_factor=2.0),
        has_retry=True, metadata={"kind": "welcome"},
    )
    resp = await raw("Enqueue", pb.EnqueueRequest(shard=shard, job=spec), pb.EnqueueResponse)
    assert resp.id == "job-1"

    job = await raw.get("job-1", tenant="acme")
    assert (job.id, job.tenant, job.task_group) == ("job-1", "acme", "emails")
    assert unpack(job.payload) == {"to": "a@b.c"}
    assert job.priority == 7
    assert job.retry is not None and job.retry.retry_count == 3
    assert dict(job.metadata) == {"kind": "welcome"}
    assert job.status == S.SCHEDULED
    assert job.attempt_count == 0
    assert job.enqueued_at_ms > 0
    assert list(job.attempts) == []

    # Without an id the server picks one.
    generated = await raw.enqueue("emails", "x")
    assert generated
    assert (await raw.get(generated)).status == S.SCHEDULED


async def test_get_job_with_and_without_attempts(raw: Raw) -> None:
    job_id = await raw.enqueue("g", 1, retry=pb.RetryPolicy(retry_count=1), has_retry=True)
    task = await raw.lease_one()
    await raw.report(task, failure=pb.Failure(code="FLAKY", data=pack("once")))
    task2 = await raw.lease_one()
    assert task2.attempt == 2
    await raw.report(task2, success=pack("done"))

    plain = await raw.get(job_id)
    assert plain.status == S.SUCCEEDED
    assert plain.attempt_count == 2
    assert list(plain.attempts) == []

    full = await raw.get(job_id, attempts=True)
    # Newest first.
    assert [(a.attempt, a.state) for a in full.attempts] == [(2, A.SUCCEEDED), (1, A.FAILED)]
    second, first = full.attempts
    assert first.error_code == "FLAKY" and unpack(first.error_data) == "once"
    assert first.worker_id == "w1" and first.task_id == task.task_id
    assert unpack(second.result) == "done"
    assert second.ended_at_ms >= second.started_at_ms > 0


async def test_enqueue_batch(client: SiloClient, raw: Raw) -> None:
    shard = await raw.shard("default")
    jobs = [pb.JobSpec(id=f"b{i}", task_group="batch", payload=pack(i)) for i in range(3)]
    resp = await raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard, jobs=jobs),
                     pb.EnqueueBatchResponse)
    assert list(resp.ids) == ["b0", "b1", "b2"]
    for i in range(3):
        assert unpack((await raw.get(f"b{i}")).payload) == i

    empty = await raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard),
                      pb.EnqueueBatchResponse)
    assert list(empty.ids) == []

    # All or nothing: one taken id (a different job) rejects the whole batch, per job.
    dup = [pb.JobSpec(id="b3", task_group="batch"), pb.JobSpec(id="b0", task_group="batch")]
    resp = await raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard, jobs=dup),
                     pb.EnqueueBatchResponse)
    assert [(r.id, r.code) for r in resp.results] == [("b3", Code.ABORTED),
                                                      ("b0", Code.ALREADY_EXISTS)]
    assert "job already exists" in resp.results[1].message and "'b0'" in resp.results[1].message
    await expect_error(raw.get("b3"), Code.NOT_FOUND, "job not found")

    # A tenant of another shard in the batch is refused too.
    other = next(t for s, t in (await tenants_by_shard(client, 2)).items() if s != shard)
    mixed = [pb.JobSpec(id="b4", task_group="batch"),
             pb.JobSpec(id="b5", tenant=other, task_group="batch")]
    resp = await raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard, jobs=mixed),
                     pb.EnqueueBatchResponse)
    assert [(r.id, r.code) for r in resp.results] == [("b4", Code.ABORTED),
                                                      ("b5", Code.INVALID_ARGUMENT)]
    assert f"tenant {other!r} belongs to shard" in resp.results[1].message
    await expect_error(raw.get("b4"), Code.NOT_FOUND, "job not found")
    await raw.alive()


async def test_lease_heartbeat_report_on_one_shard(raw: Raw, node: Node) -> None:
    job_id = await raw.enqueue("single", {"n": 1}, priority=3, has_priority=True,
                               metadata={"k": "v"})
    shard = await raw.shard()
    other_shard = (shard + 1) % node.config.shards
    nothing = await raw.lease("w1", "single", shard=other_shard)
    assert list(nothing.tasks) == []

    resp = await raw.lease("w1", "single", shard=shard, max_tasks=5)
    assert resp.lease_ms == node.config.lease_ms
    [task] = resp.tasks
    assert (task.shard, task.job_id, task.tenant, task.attempt) == (shard, job_id, "default", 1)
    assert (task.task_group, task.priority, dict(task.metadata)) == ("single", 3, {"k": "v"})
    assert unpack(task.payload) == {"n": 1}
    assert task.task_id and task.lease_expiry_ms > now_ms()
    assert (await raw.get(job_id)).status == S.RUNNING

    beat = await raw.heartbeat(task)
    assert beat.cancelled is False
    assert beat.lease_expiry_ms >= task.lease_expiry_ms

    await raw.report(task, success=pack({"answer": 42}))
    assert (await raw.get(job_id)).status == S.SUCCEEDED
    result = await raw.result(job_id)
    assert result.status == S.SUCCEEDED
    assert unpack(result.result) == {"answer": 42}

    # Reports are idempotent: the same outcome again is accepted.
    await raw.report(task, success=pack({"answer": 42}))
    # A different outcome for the ended attempt is not.
    await expect_error(raw.report(task, failure=pb.Failure(code="LATE")), Code.NOT_FOUND,
                       "lease not found")
    # Nor is a heartbeat for it.
    await expect_error(raw.heartbeat(task), Code.NOT_FOUND, "lease not found")
    await raw.alive()


async def test_lease_all_shards_and_long_poll(client: SiloClient, raw: Raw) -> None:
    tenants = await tenants_by_shard(client, 3)
    for shard, tenant in tenants.items():
        await raw.enqueue("multi", shard, tenant=tenant)
    resp = await raw.lease("w1", "multi", max_tasks=10)
    assert sorted(t.shard for t in resp.tasks) == sorted(tenants)
    for t in resp.tasks:
        assert unpack(t.payload) == t.shard
        assert t.tenant == tenants[t.shard]

    # A long poll with nothing to lease waits for wait_ms, then answers empty.
    start = trio.current_time()
    empty = await raw.lease("w1", "poll", wait_ms=400)
    elapsed = trio.current_time() - start
    assert list(empty.tasks) == []
    assert 0.35 <= elapsed < 3.0, elapsed

    # A long poll is answered as soon as work arrives on any shard.
    got: list[pb.Task] = []
    answered_at: list[float] = []

    async def poll() -> None:
        r = await raw.lease("w2", "poll", wait_ms=10_000)
        got.extend(r.tasks)
        answered_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.3)
        assert got == [] and answered_at == []
        enqueued_at = trio.current_time()
        last_tenant = list(tenants.values())[-1]
        job_id = await raw.enqueue("poll", "wake", tenant=last_tenant)
    assert [t.job_id for t in got] == [job_id]
    assert answered_at[0] - enqueued_at < 2.0


async def test_report_failure_then_result(raw: Raw) -> None:
    job_id = await raw.enqueue("fail", None)
    task = await raw.lease_one(task_group="fail")
    await raw.report(task, failure=pb.Failure(code="BAD_INPUT", data=pack({"field": "x"})))
    result = await raw.result(job_id)
    assert result.status == S.FAILED
    assert result.error_code == "BAD_INPUT"
    assert unpack(result.error_data) == {"field": "x"}


async def test_cancel_scheduled_and_running(raw: Raw) -> None:
    waiting = await raw.enqueue("cancel", "a")
    await raw.action("CancelJob", waiting)
    job = await raw.get(waiting)
    assert job.status == S.CANCELLED and job.cancel_requested
    result = await raw.result(waiting)
    assert result.status == S.CANCELLED and result.cancelled_at_ms > 0
    # Nothing left to lease.
    assert list((await raw.lease("w1", "cancel")).tasks) == []

    running = await raw.enqueue("cancel", "b")
    task = await raw.lease_one(task_group="cancel")
    await raw.action("CancelJob", running)
    job = await raw.get(running)
    assert job.status == S.RUNNING and job.cancel_requested
    assert (await raw.heartbeat(task)).cancelled is True
    await raw.report(task, cancelled=pb.Cancelled())
    assert (await raw.get(running)).status == S.CANCELLED
    assert (await raw.get(running, attempts=True)).attempts[0].state == A.CANCELLED


async def test_restart_failed_and_cancelled(raw: Raw) -> None:
    job_id = await raw.enqueue("restart", "r")
    task = await raw.lease_one(task_group="restart")
    await raw.report(task, failure=pb.Failure(code="BOOM"))
    assert (await raw.get(job_id)).status == S.FAILED

    await raw.action("RestartJob", job_id)
    assert (await raw.get(job_id)).status == S.SCHEDULED
    task2 = await raw.lease_one(task_group="restart")
    assert (task2.job_id, task2.attempt) == (job_id, 2)
    await raw.report(task2, success=pack("second time"))
    assert unpack((await raw.result(job_id)).result) == "second time"

    cancelled = await raw.enqueue("restart", "c")
    await raw.action("CancelJob", cancelled)
    await raw.action("RestartJob", cancelled)
    job = await raw.get(cancelled)
    assert job.status == S.SCHEDULED and not job.cancel_requested


async def test_expedite_future_job(raw: Raw) -> None:
    later = now_ms() + 600_000
    job_id = await raw.enqueue("later", "soon", start_at_ms=later)
    job = await raw.get(job_id)
    assert job.status == S.SCHEDULED and job.next_attempt_at_ms == later
    assert list((await raw.lease("w1", "later")).tasks) == []

    await raw.action("ExpediteJob", job_id)
    assert (await raw.get(job_id)).next_attempt_at_ms <= now_ms()
    task = await raw.lease_one(task_group="later")
    assert (task.job_id, task.attempt) == (job_id, 1)
    # Expediting a job that is already due is a no-op, not an error.
    due = await raw.enqueue("later", "now")
    await raw.action("ExpediteJob", due)


async def test_delete_terminal_job(raw: Raw) -> None:
    job_id = await raw.enqueue("del", "x")
    task = await raw.lease_one(task_group="del")
    await raw.report(task, success=pack(1))
    await raw.action("DeleteJob", job_id)
    await expect_error(raw.get(job_id), Code.NOT_FOUND, "job not found", repr(job_id))
    await expect_error(raw.result(job_id), Code.NOT_FOUND, "job not found")
    # The id is free again.
    assert await raw.enqueue("del", "y", id=job_id) == job_id


async def test_report_outcomes_mixed(client: SiloClient, raw: Raw, node: Node) -> None:
    ids = [await raw.enqueue("mixed", i) for i in range(4)]
    tasks = {t.job_id: t for t in (await raw.lease("w1", "mixed", max_tasks=10)).tasks}
    assert sorted(tasks) == sorted(ids)
    t0, t1, t2, t3 = (tasks[i] for i in ids)
    await raw.report(t3, success=pack("already"))

    ghost = pb.Task(shard=t0.shard, task_id="no-such-task", tenant="default", job_id="ghost",
                    attempt=1)
    outcomes = [
        outcome_for(t0, success=pack("ok")),                          # OK
        outcome_for(t1, failure=pb.Failure(code="E1", data=pack(1))),  # OK (job FAILED)
        outcome_for(t2, "intruder"),                                    # owner mismatch
        outcome_for(ghost),                                             # lease not found
        outcome_for(t3, success=pack("already")),                       # repeated: OK
        pb.Outcome(shard=node.config.shards + 5, worker_id="w1", task_id=t2.task_id,
                   success=pack(None)),                                  # shard not found
        outcome_for(t2, success=b"\xc1"),                               # malformed msgpack
        pb.Outcome(shard=t2.shard, worker_id="w1", task_id=t2.task_id),  # no outcome at all
    ]
    resp = await raw("ReportOutcomes", pb.ReportOutcomesRequest(outcomes=outcomes),
                     pb.ReportOutcomesResponse)
    statuses = list(resp.statuses)
    assert len(statuses) == len(outcomes)
    expected = [
        (Code.OK, ""),
        (Code.OK, ""),
        (Code.FAILED_PRECONDITION, "lease owner mismatch"),
        (Code.NOT_FOUND, "lease not found"),
        (Code.OK, ""),
        (Code.NOT_FOUND, "shard not found"),
        (Code.INVALID_ARGUMENT, "not valid msgpack"),
        (Code.INVALID_ARGUMENT, "outcome must be"),
    ]
    for i, (status, (code, fragment)) in enumerate(zip(statuses, expected, strict=True)):
        assert status.code == code, (i, status)
        assert fragment in status.message, (i, status)

    assert (await raw.get(ids[0])).status == S.SUCCEEDED
    assert (await raw.get(ids[1])).status == S.FAILED
    assert (await raw.get(ids[2])).status == S.RUNNING  # still leased to w1
    assert (await raw.get(ids[3])).status == S.SUCCEEDED
    await raw.report(t2)
    assert (await raw.get(ids[2])).status == S.SUCCEEDED

    empty = await raw("ReportOutcomes", pb.ReportOutcomesRequest(), pb.ReportOutcomesResponse)
    assert list(empty.statuses) == []


async def test_get_cluster_info(raw: Raw, node: Node) -> None:
    info = await raw("GetClusterInfo", pb.GetClusterInfoRequest(), pb.GetClusterInfoResponse)
    assert info.node_id == node.config.node_id
    assert info.map_version >= 1
    shards = sorted(info.shards, key=lambda s: s.id)
    assert len(shards) == node.config.shards
    assert shards[0].range_start == 0
    for a, b in zip(shards, shards[1:], strict=False):
        assert not a.range_end_max and a.range_end == b.range_start
    assert shards[-1].range_end_max
    assert {s.owner_address for s in shards} == {node.address}
    assert {s.owner_node for s in shards} == {node.config.node_id}


async def test_unknown_method_is_unimplemented(raw: Raw) -> None:
    await expect_error(raw("NoSuchMethod", b"", pb.JobActionResponse), Code.UNIMPLEMENTED)
    await raw.alive()


# -- error paths ------------------------------------------------------------------------------


async def test_not_found(raw: Raw, node: Node) -> None:
    for method in ("CancelJob", "RestartJob", "ExpediteJob", "DeleteJob"):
        await expect_error(raw.action(method, "nope"), Code.NOT_FOUND, "job not found",
                           "'nope'")
    await expect_error(raw.get("nope"), Code.NOT_FOUND, "job not found", "'nope'")
    await expect_error(raw.result("nope"), Code.NOT_FOUND, "job not found")
    await raw.alive()

    bad_shard = node.config.shards + 3
    ref = pb.JobRef(shard=bad_shard, tenant="default", id="x")
    calls = [
        raw("Enqueue", pb.EnqueueRequest(shard=bad_shard, job=pb.JobSpec(task_group="g")),
            pb.EnqueueResponse),
        raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=bad_shard,
                                                   jobs=[pb.JobSpec(task_group="g")]),
            pb.EnqueueBatchResponse),
        raw("GetJob", pb.GetJobRequest(job=ref), pb.GetJobResponse),
        raw("GetJobResult", pb.GetJobResultRequest(job=ref), pb.GetJobResultResponse),
        raw("CancelJob", pb.JobActionRequest(job=ref), pb.JobActionResponse),
        raw.lease("w1", "g", shard=bad_shard),
        raw("Heartbeat", pb.HeartbeatRequest(shard=bad_shard, worker_id="w1", task_id="t"),
            pb.HeartbeatResponse),
        raw("ReportOutcome", pb.ReportOutcomeRequest(outcome=pb.Outcome(
            shard=bad_shard, worker_id="w1", task_id="t", success=b"")),
            pb.ReportOutcomeResponse),
    ]
    for call in calls:
        await expect_error(call, Code.NOT_FOUND, "shard not found", str(bad_shard))
        await raw.alive()

    shard = await raw.shard()
    ghost = pb.Task(shard=shard, task_id="t-missing", tenant="default", job_id="j", attempt=1)
    await expect_error(raw.heartbeat(ghost), Code.NOT_FOUND, "lease not found", "'t-missing'")
    await expect_error(raw.report(ghost), Code.NOT_FOUND, "lease not found", "'t-missing'")
    await raw.alive()


async def test_already_exists(raw: Raw) -> None:
    await raw.enqueue("dup", 1, id="same")
    await expect_error(raw.enqueue("dup", 2, id="same"), Code.ALREADY_EXISTS,
                       "job already exists", "'same'")
    assert unpack((await raw.get("same")).payload) == 1
    # The same id in another tenant is a different job.
    assert await raw.enqueue("dup", 3, id="same", tenant="other") == "same"
    await raw.alive()


async def test_lease_owner_mismatch(raw: Raw) -> None:
    job_id = await raw.enqueue("own", None)
    task = await raw.lease_one("w1", "own")
    await expect_error(raw.heartbeat(task, "w2"), Code.FAILED_PRECONDITION,
                       "lease owner mismatch", task.task_id)
    await expect_error(raw.report(task, "w2"), Code.FAILED_PRECONDITION, "lease owner mismatch")
    assert (await raw.get(job_id)).status == S.RUNNING
    await raw.report(task, "w1")
    # After the attempt ended, another worker's report is still refused as a mismatch.
    await expect_error(raw.report(task, "w2"), Code.FAILED_PRECONDITION, "lease owner mismatch")
    assert (await raw.get(job_id)).status == S.SUCCEEDED
    await raw.alive()


# Operations the state table of DESIGN §3 forbids, and the status each is tried in.
FORBIDDEN = [
    ("CancelJob", "cancel", S.SUCCEEDED),
    ("CancelJob", "cancel", S.FAILED),
    ("CancelJob", "cancel", S.CANCELLED),
    ("RestartJob", "restart", S.SCHEDULED),
    ("RestartJob", "restart", S.RUNNING),
    ("RestartJob", "restart", S.SUCCEEDED),
    ("ExpediteJob", "expedite", S.RUNNING),
    ("ExpediteJob", "expedite", S.SUCCEEDED),
    ("ExpediteJob", "expedite", S.FAILED),
    ("ExpediteJob", "expedite", S.CANCELLED),
    ("DeleteJob", "delete", S.SCHEDULED),
    ("DeleteJob", "delete", S.RUNNING),
    ("GetJobResult", "result", S.SCHEDULED),
    ("GetJobResult", "result", S.RUNNING),
]


async def _job_in(raw: Raw, status: pb.JobStatus, group: str) -> str:
    job_id = await raw.enqueue(group, status.name)
    if status == S.SCHEDULED:
        return job_id
    if status == S.CANCELLED:
        await raw.action("CancelJob", job_id)
        return job_id
    task = await raw.lease_one(task_group=group)
    if status == S.SUCCEEDED:
        await raw.report(task)
    elif status == S.FAILED:
        await raw.report(task, failure=pb.Failure(code="X"))
    assert (await raw.get(job_id)).status == status
    return job_id


async def test_state_table_violations(raw: Raw) -> None:
    for i, (method, op, status) in enumerate(FORBIDDEN):
        job_id = await _job_in(raw, status, f"state-{i}")
        call = raw.result(job_id) if method == "GetJobResult" else raw.action(method, job_id)
        await expect_error(call, Code.FAILED_PRECONDITION,
                           f"cannot {op} a job that is {status.name}")
        assert (await raw.get(job_id)).status == status, (method, status)
        await raw.alive()


async def test_invalid_arguments(start_node: StartNode) -> None:
    node = await start_node(limits=ShardLimits(payload_max_bytes=1000))
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        shard = await raw.shard()

        def enqueue(**spec: object) -> object:
            spec.setdefault("task_group", "g")
            return raw("Enqueue", pb.EnqueueRequest(shard=shard, job=pb.JobSpec(**spec)),
                       pb.EnqueueResponse)

        other_shard, other_tenant = next(
            (s, t) for s, t in (await tenants_by_shard(client, 2)).items() if s != shard
        )
        cases = [
            (enqueue(payload=pack("x" * 1200)), "payload_max_bytes is 1000"),
            (enqueue(priority=100, has_priority=True), "priority 100", "0..99"),
            (enqueue(task_group=""), "task group must not be empty"),
            (enqueue(task_group="g" * 65), "task_group_max_chars is 64"),
            (enqueue(payload=b"\xc1"), "payload is not valid msgpack"),
            (enqueue(payload=pack(1) + pack(2)), "payload is not valid msgpack"),
            (enqueue(tenant=other_tenant),
             f"tenant {other_tenant!r} belongs to shard {other_shard}, not shard {shard}"),
            (enqueue(id="i" * 129), "job_id_max_chars is 128"),
            (enqueue(tenant="t" * 65), "tenant_max_chars is 64"),
            (enqueue(metadata={f"k{i}": "v" for i in range(17)}), "metadata_max_entries"),
            (raw("Enqueue", pb.EnqueueRequest(shard=shard), pb.EnqueueResponse),
             "job is required"),
            (raw("Enqueue", b"\x12\xff", pb.EnqueueResponse), "malformed Enqueue request"),
            (raw("EnqueueBatch", b"\x08\x01\x12\x05abc", pb.EnqueueBatchResponse),
             "malformed EnqueueBatch request"),
            (raw("GetJob", b"\x0f", pb.GetJobResponse), "malformed GetJob request"),
            (raw("LeaseTasks", b"\xff\xff\xff", pb.LeaseTasksResponse),
             "malformed LeaseTasks request"),
            (raw.lease("w1", "g", max_tasks=0), "max_tasks 0", "max_tasks_per_lease"),
            (raw.lease("w1", "g", max_tasks=1001), "max_tasks_per_lease (1000)"),
            (raw.lease("w1", "g", wait_ms=30_001), "wait_ms 30001"),
            (raw.lease("", "g"), "worker id must not be empty"),
            (raw.lease("w1", "", shard=shard), "task group must not be empty"),
            (raw("GetJob", pb.GetJobRequest(job=pb.JobRef(shard=shard)), pb.GetJobResponse),
             "job id is required"),
            (raw("GetJob", pb.GetJobRequest(), pb.GetJobResponse), "job reference is required"),
            (raw("GetJob", pb.GetJobRequest(job=pb.JobRef(shard=other_shard, id="x")),
                 pb.GetJobResponse), "tenant 'default' belongs to shard"),
            (raw("ReportOutcome", pb.ReportOutcomeRequest(), pb.ReportOutcomeResponse),
             "outcome is required"),
        ]
        for call, *fragments in cases:
            await expect_error(call, Code.INVALID_ARGUMENT, *fragments)
            await raw.alive()

        # A payload at the limit is fine.
        ok = pack(b"x" * (1000 - 3))
        assert len(ok) == 1000
        await raw.enqueue("g", b"x" * (1000 - 3))


async def test_default_payload_limit_is_1_mib(raw: Raw) -> None:
    at_limit = b"x" * (MIB - 5)
    assert len(pack(at_limit)) == MIB
    job_id = await raw.enqueue("big", at_limit)
    assert len((await raw.get(job_id)).payload) == MIB

    await expect_error(raw.enqueue("big", b"x" * (MIB - 4)), Code.INVALID_ARGUMENT,
                       f"payload is {MIB + 1} bytes; payload_max_bytes is {MIB}")
    await raw.alive()

    # The same limit for results.
    task = await raw.lease_one(task_group="big")
    await expect_error(raw.report(task, success=pack(b"y" * MIB)), Code.INVALID_ARGUMENT,
                       "result_max_bytes")
    await raw.report(task, success=pack("small"))
    await raw.alive()


async def test_message_above_max_message_bytes(start_node: StartNode) -> None:
    node = await start_node(max_message_bytes=64 * 1024)
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        for size in (64 * 1024 + 100, 600 * 1024):
            await expect_error(raw.enqueue("g", b"z" * size), Code.RESOURCE_EXHAUSTED,
                               "exceeds the limit of 65536")
            await raw.alive()
        # Just under the limit works.
        job_id = await raw.enqueue("g", b"z" * 60_000)
        assert (await raw.get(job_id)).status == S.SCHEDULED

"""The same tests against the three Python clients (trio, asyncio and uvloop, blocking) over real
gRPC on 127.0.0.1: enqueue, batches, reads, results, job actions, queues, cluster info, error
codes, idempotent re-enqueue and routing by owner hints. Workers' side of each job is played
with single-attempt raw calls."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from silo.client import (
    ConcurrencyLimit,
    JobCancelled,
    JobFailed,
    JobStatus,
    RetryPolicy,
    pack,
)
from silo.client.client import RetrySettings
from silo.errors import AlreadyExists, Code, FailedPrecondition, InvalidArgument, NotFound
from silo.model import NewJob
from silo.node import SHARD_OWNER_METADATA
from silo.rpc import Channel, Connector, RpcError, method_path
from silo.wire import pb
from tests.integration.clients import KINDS, Driven, ToTrio, open_client
from tests.integration.support import Raw, free_port


@pytest.fixture(params=KINDS)
async def silo(request: pytest.FixtureRequest, address: str) -> AsyncIterator[Driven]:
    async with open_client(request.param, address) as client:
        yield client


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def now_ms() -> int:
    return int(time.time() * 1000)


async def tenant_on_other_shard(raw: Raw, shard: int) -> str:
    for i in range(500):
        if await raw.shard(f"t-{i}") != shard:
            return f"t-{i}"
    raise AssertionError("no tenant on another shard")


async def test_enqueue_get_and_result(silo: Driven, raw: Raw) -> None:
    job = await silo.enqueue(
        "emails", {"to": "a@b.c"}, tenant="acme", id="job-1", priority=7,
        retry=RetryPolicy(retry_count=2), metadata={"kind": "welcome"},
        limits=[ConcurrencyLimit("mail", 3)], timeout_ms=5000,
    )
    assert (job.id, job.tenant) == ("job-1", "acme")
    got = await job.get()
    assert (got.id, got.tenant, got.task_group, got.payload) == ("job-1", "acme", "emails",
                                                                 {"to": "a@b.c"})
    assert (got.priority, got.retry.retry_count, got.metadata) == (7, 2, {"kind": "welcome"})
    assert got.limits == (ConcurrencyLimit("mail", 3),) and got.timeout_ms == 5000
    assert got.status == JobStatus.SCHEDULED and got.attempts is None
    assert await job.status() == JobStatus.SCHEDULED

    task = (await raw.lease(task_group="emails")).tasks[0]
    assert task.job_id == "job-1"
    await raw.report(task, success=pack({"sent": True}))
    assert await job.result(timeout=10) == {"sent": True}
    full = await job.get(attempts=True)
    assert full.status == JobStatus.SUCCEEDED and len(full.attempts) == 1
    # A handle for an existing job, and ids the client draws itself.
    again = await silo.job("job-1", "acme")
    assert (await again.get()).status == JobStatus.SUCCEEDED
    generated = await silo.enqueue("emails")
    assert len(generated.id) == 32 and generated.tenant == "default"


async def test_result_failed_cancelled_and_timeout(silo: Driven, raw: Raw) -> None:
    failing = await silo.enqueue("f", 1)
    task = await raw.lease_one(task_group="f")
    await raw.report(task, failure=pb.Failure(code="BAD_INPUT", data=pack({"field": "x"})))
    with pytest.raises(JobFailed) as failed:
        await failing.result(timeout=10)
    assert (failed.value.error_code, failed.value.error_data) == ("BAD_INPUT", {"field": "x"})

    cancelled = await silo.enqueue("c", 1)
    await cancelled.cancel()
    with pytest.raises(JobCancelled):
        await cancelled.result(timeout=10)

    pending = await silo.enqueue("p", 1)
    with pytest.raises(silo.timeout_error):
        await pending.result(timeout=0.3)
    assert await pending.status() == JobStatus.SCHEDULED


async def test_enqueue_jobs_across_shards_and_a_refused_batch(silo: Driven, raw: Raw) -> None:
    shard = await raw.shard("default")
    other = await tenant_on_other_shard(raw, shard)
    batch = [NewJob("b", pack(i), job_id=f"b{i}", tenant=("default", other)[i % 2])
             for i in range(6)] + [NewJob("b", pack("no id"))]
    handles = await silo.enqueue_jobs(batch)
    assert [h.id for h in handles[:6]] == [f"b{i}" for i in range(6)]
    assert len(handles[6].id) == 32
    for i, h in enumerate(handles[:6]):
        assert (await h.get()).payload == i
        assert h.tenant == ("default", other)[i % 2]

    # One taken id (a different job) refuses its whole batch, with ALREADY_EXISTS.
    with pytest.raises(AlreadyExists, match="b0"):
        await silo.enqueue_jobs([NewJob("b", pack("x"), job_id="fresh"),
                                 NewJob("b", pack("different"), job_id="b0")])
    with pytest.raises(RpcError) as info:
        await raw.get("fresh")
    assert info.value.code == Code.NOT_FOUND


async def test_cancel_restart_expedite_delete(silo: Driven, raw: Raw) -> None:
    later = await silo.enqueue("later", "soon", start_at_ms=now_ms() + 600_000)
    assert not (await raw.lease(task_group="later")).tasks
    await later.expedite()
    task = await raw.lease_one(task_group="later")
    assert task.job_id == later.id
    await later.cancel()
    assert (await later.get()).cancel_requested
    await raw.report(task, cancelled=pb.Cancelled())
    assert await later.status() == JobStatus.CANCELLED

    await later.restart()
    assert await later.status() == JobStatus.SCHEDULED
    task = await raw.lease_one(task_group="later")
    await raw.report(task, success=pack("second"))
    assert await later.result(timeout=10) == "second"
    await later.delete()
    with pytest.raises(NotFound):
        await later.get()


async def test_errors_carry_their_codes(silo: Driven, raw: Raw) -> None:
    missing = await silo.job("nope")
    for op in ("get", "cancel", "restart", "expedite", "delete"):
        with pytest.raises(NotFound, match="job not found") as info:
            await getattr(missing, op)()
        assert info.value.code == Code.NOT_FOUND
    running = await silo.enqueue("e", 1)
    await raw.lease_one(task_group="e")
    with pytest.raises(FailedPrecondition, match="cannot delete a job that is RUNNING"):
        await running.delete()
    with pytest.raises(InvalidArgument, match="priority 100"):
        await silo.enqueue("e", priority=100)
    with pytest.raises(InvalidArgument, match="timeout_ms must be a positive integer"):
        await silo.enqueue("e", timeout_ms=0)
    with pytest.raises(InvalidArgument, match="attempts must be"):
        await running.get(attempts=0)
    with pytest.raises(InvalidArgument, match="job id is required"):
        await silo.job("")
    await raw.alive()


async def test_re_enqueue_is_idempotent(silo: Driven, raw: Raw) -> None:
    first = await silo.enqueue("g", {"n": 1}, id="same")
    again = await silo.enqueue("g", {"n": 1}, id="same")
    assert again.id == first.id
    with pytest.raises(AlreadyExists, match="'same'"):
        await silo.enqueue("g", {"n": 2}, id="same")
    assert (await first.get()).payload == {"n": 1}
    assert len((await raw.lease(max_tasks=10)).tasks) == 1


class LossyConnector:
    """Loses the answer of the first call of ``method`` (it did reach the server), after running
    ``between`` in trio (e.g. the job runs and is deleted); records every request sent."""

    def __init__(self, inner: Connector, to_trio: ToTrio, method: str, between: Any) -> None:
        self.inner, self.to_trio = inner, to_trio
        self.method, self.between = method_path(method), between
        self.sent: list[bytes] = []

    async def connect(self, address: str) -> Channel:
        return _LossyChannel(self, await self.inner.connect(address))


class _LossyChannel:
    def __init__(self, owner: LossyConnector, inner: Channel) -> None:
        self.owner, self.inner = owner, inner

    async def call(self, method: str, request: bytes, *, timeout: float | None = None,
                   metadata: dict[str, str] | None = None) -> bytes:
        reply = await self.inner.call(method, request, timeout=timeout, metadata=metadata)
        if method == self.owner.method:
            self.owner.sent.append(request)
            if len(self.owner.sent) == 1:
                if self.owner.between is not None:
                    await self.owner.to_trio(self.owner.between)
                raise RpcError(Code.UNAVAILABLE, "connection lost (test)")
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_retry_after_a_lost_answer_neither_duplicates_nor_recreates(
    kind: str, raw: Raw, address: str,
) -> None:
    async def run_and_delete() -> None:
        [task] = (await raw.lease(max_tasks=10)).tasks
        await raw.report(task, success=pack("done"))
        await raw.action("DeleteJob", task.job_id)

    made: list[LossyConnector] = []

    def lossy(method: str, between: Any) -> Any:
        def wrap(inner: Connector, to_trio: ToTrio) -> Connector:
            made.append(LossyConnector(inner, to_trio, method, between))
            return made[-1]
        return wrap

    async with open_client(kind, address, wrap=lossy("Enqueue", None)) as client:
        handle = await client.enqueue("g", "v", id="once")
    assert handle.id == "once"
    assert len((await raw.lease(max_tasks=10)).tasks) == 1  # stored once

    async with open_client(kind, address, wrap=lossy("Enqueue", run_and_delete)) as client:
        await client.enqueue("g", "w", id="gone")
    first, retry = (pb.EnqueueRequest.parse(r) for r in made[-1].sent)
    assert first.request_id and retry.request_id == first.request_id
    with pytest.raises(RpcError):
        await raw.get("gone")  # ran, deleted, and not created again by the retry

    async with open_client(kind, address, wrap=lossy("EnqueueBatch", None)) as client:
        handles = await client.enqueue_jobs([NewJob("g", pack(i), job_id=f"lb{i}")
                                             for i in range(3)])
    assert [h.id for h in handles] == ["lb0", "lb1", "lb2"]
    assert len((await raw.lease(max_tasks=10)).tasks) == 3


async def test_queue_and_cluster_info(silo: Driven, raw: Raw, address: str) -> None:
    holder = await silo.enqueue("q", 1, limits=[ConcurrencyLimit("k", 1)])
    waiter = await silo.enqueue("q", 2, limits=[ConcurrencyLimit("k", 1)])
    task = await raw.lease_one(task_group="q")
    assert task.job_id == holder.id
    queue = await silo.queue("k")
    assert (queue.key, queue.max_concurrency, queue.holders, queue.waiting) == ("k", 1, 1, 1)
    assert [w.job_id for w in queue.first_waiting] == [waiter.id]

    info = await silo.cluster_info()
    assert len(info.shards) == 4 and {s.owner_address for s in info.shards} == {address}
    assert silo.shard_map.version == info.map_version
    assert await silo.owner_addresses() == [address]
    assert await silo.shard_for("default") == await raw.shard("default")
    assert (await silo.refresh_shard_map(force=True)).version == info.map_version


STALE = "127.0.0.1:1"


class StaleMapConnector:
    """Reports every shard as owned by :data:`STALE`, whose channel answers "shard not found"
    with an owner hint naming the real node; counts the calls that reached it."""

    def __init__(self, inner: Connector, real: str) -> None:
        self.inner, self.real = inner, real
        self.stale_calls: list[str] = []

    async def connect(self, address: str) -> Channel:
        if address == STALE:
            return _StaleChannel(self)
        return _RewritingChannel(await self.inner.connect(address))


class _RewritingChannel:
    def __init__(self, inner: Channel) -> None:
        self.inner = inner

    async def call(self, method: str, request: bytes, *, timeout: float | None = None,
                   metadata: dict[str, str] | None = None) -> bytes:
        reply = await self.inner.call(method, request, timeout=timeout, metadata=metadata)
        if method == method_path("GetClusterInfo"):
            info = pb.GetClusterInfoResponse.parse(reply)
            for shard in info.shards:
                shard.owner_address = STALE
            reply = bytes(info)
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


class _StaleChannel:
    def __init__(self, owner: StaleMapConnector) -> None:
        self.owner = owner

    async def call(self, method: str, request: bytes, *, timeout: float | None = None,
                   metadata: dict[str, str] | None = None) -> bytes:
        self.owner.stale_calls.append(method)
        raise RpcError(Code.NOT_FOUND, "shard not found (test)",
                       {SHARD_OWNER_METADATA: self.owner.real})

    async def aclose(self) -> None:
        pass


async def test_follows_owner_hints(kind: str, raw: Raw, address: str) -> None:
    made: list[StaleMapConnector] = []

    def stale(inner: Connector, to_trio: ToTrio) -> Connector:
        made.append(StaleMapConnector(inner, address))
        return made[-1]

    async with open_client(kind, address, wrap=stale) as client:
        assert await client.owner_addresses() == [STALE]
        first = await client.enqueue("h", 1)
        assert made[0].stale_calls == ["/silo.v1.Silo/Enqueue"]
        # The hint is remembered: the next calls for that shard go straight to the owner.
        await client.enqueue("h", 2)
        assert (await first.get()).payload == 1
        assert len(made[0].stale_calls) == 1
    assert len((await raw.lease("w1", "h", max_tasks=10)).tasks) == 2


async def test_an_unreachable_seed_is_skipped(kind: str, address: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    retry = RetrySettings(initial_backoff_s=0.01, call_timeout_s=5.0)
    async with open_client(kind, address, seeds=(dead, address), retry=retry) as client:
        assert client.shard_map is not None
        job = await client.enqueue("s", 1)
        assert (await job.get()).status == JobStatus.SCHEDULED

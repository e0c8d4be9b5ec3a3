"""EnqueueBatch over real gRPC (issue 8, defect 9): per-job results, request fingerprints, and a
client that no longer takes ALREADY_EXISTS on a retry as "my first try landed"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from silo.client import SiloClient, pack
from silo.client.client import RetrySettings
from silo.errors import AlreadyExists, Code
from silo.model import NewJob
from silo.rpc import Channel, RpcError, method_path
from silo.transport.grpc import GrpcConnector
from silo.wire import pb
from tests.integration.support import Raw

Between = Callable[[], Awaitable[None]]
CALL = "a" * 32
"""A request id, as a client draws one per enqueue call."""


class LossyChannel:
    """Fails the first call of ``method`` with UNAVAILABLE: before sending it
    (``deliver=False``: the server never saw it) or after (its answer is lost; ``between``
    then runs before the failure is seen, e.g. the job runs and is deleted)."""

    def __init__(self, inner: Channel, method: str, *, deliver: bool,
                 between: Between | None = None) -> None:
        self.inner = inner
        self.method = method_path(method)
        self.deliver = deliver
        self.between = between
        self.lost = 0
        self.sent: list[bytes] = []

    async def call(self, method: str, request: bytes, *, timeout: float | None = None,
                   metadata: dict[str, str] | None = None) -> bytes:
        if method == self.method:
            self.sent.append(request)
        if method == self.method and self.lost == 0:
            self.lost += 1
            if self.deliver:
                await self.inner.call(method, request, timeout=timeout, metadata=metadata)
                if self.between is not None:
                    await self.between()
            raise RpcError(Code.UNAVAILABLE, "connection lost (test)")
        return await self.inner.call(method, request, timeout=timeout, metadata=metadata)

    async def aclose(self) -> None:
        await self.inner.aclose()


class LossyConnector:
    def __init__(self, inner: GrpcConnector, method: str, *, deliver: bool,
                 between: Between | None = None) -> None:
        self.inner = inner
        self.method = method
        self.deliver = deliver
        self.between = between
        self.channels: list[LossyChannel] = []

    async def connect(self, address: str) -> Channel:
        ch = LossyChannel(await self.inner.connect(address), self.method, deliver=self.deliver,
                          between=self.between)
        self.channels.append(ch)
        return ch


@asynccontextmanager
async def lossy_client(address: str, method: str, *, deliver: bool,
                       between: Between | None = None) -> AsyncIterator[SiloClient]:
    async with GrpcConnector.open() as connector:
        client = SiloClient(LossyConnector(connector, method, deliver=deliver, between=between),
                            [address],
                            retry=RetrySettings(initial_backoff_s=0.01))
        try:
            await client.refresh_shard_map()
            yield client
        finally:
            await client.aclose()


def jobs(*ids: str, payload: object = "p") -> list[NewJob]:
    return [NewJob("g", pack(payload), job_id=i) for i in ids]


async def test_batch_refused_on_retry_is_not_reported_enqueued(raw: Raw, address: str) -> None:
    """The first try never reached the server; the retry is refused because one caller-chosen
    id already holds a different job: the client must raise, not report the batch enqueued."""
    await raw.enqueue("g", "other", id="taken")
    async with lossy_client(address, "EnqueueBatch", deliver=False) as client:
        with pytest.raises(AlreadyExists, match="taken"):
            await client.enqueue_jobs(jobs("fresh-1", "taken", "fresh-2"))
    for job_id in ("fresh-1", "fresh-2"):
        with pytest.raises(RpcError) as info:
            await raw.get(job_id)
        assert info.value.code == Code.NOT_FOUND


async def test_batch_whose_answer_was_lost_is_enqueued_once(raw: Raw, address: str) -> None:
    async with lossy_client(address, "EnqueueBatch", deliver=True) as client:
        handles = await client.enqueue_jobs(jobs("b-1", "b-2", "b-3"))
    assert [h.id for h in handles] == ["b-1", "b-2", "b-3"]
    for h in handles:
        assert (await raw.get(h.id)).status == pb.JobStatus.SCHEDULED


async def test_single_enqueue_retry_after_lost_answer_is_ok(raw: Raw, address: str) -> None:
    async with lossy_client(address, "Enqueue", deliver=True) as client:
        handle = await client.enqueue("g", {"n": 1}, id="single")
        assert handle.id == "single"
    async with lossy_client(address, "Enqueue", deliver=False) as client:
        with pytest.raises(AlreadyExists):
            await client.enqueue("g", {"n": 2}, id="single")


async def test_enqueue_batch_answers_per_job_results(raw: Raw) -> None:
    shard = await raw.shard()
    await raw.enqueue("g", "v1", id="exists")
    spec = pb.JobSpec(tenant="default", id="exists", task_group="g", payload=pack("v1"))
    resp = await raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard, jobs=[
        pb.JobSpec(tenant="default", id="n1", task_group="g", payload=pack(1)), spec,
    ]), pb.EnqueueBatchResponse)
    assert [(r.id, r.code, r.existed) for r in resp.results] == [
        ("n1", Code.OK, False), ("exists", Code.OK, True)]
    resp = await raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard, jobs=[
        pb.JobSpec(tenant="default", id="n2", task_group="g", payload=pack(1)),
        pb.JobSpec(tenant="default", id="exists", task_group="g", payload=pack("v2")),
        pb.JobSpec(tenant="default", id="n3", task_group="", payload=pack(1)),
    ]), pb.EnqueueBatchResponse)
    assert [(r.id, r.code) for r in resp.results] == [
        ("n2", Code.ABORTED), ("exists", Code.ALREADY_EXISTS), ("n3", Code.INVALID_ARGUMENT)]
    assert "not written" in resp.results[0].message
    with pytest.raises(RpcError):
        await raw.get("n2")


async def test_enqueue_jobs_chunks_by_bytes(client: SiloClient, raw: Raw) -> None:
    # 30 jobs of 600 KB for one tenant (one shard) are 18 MB: one EnqueueBatch would exceed the
    # 16 MiB message cap; chunked by bytes, every call fits and every job arrives.
    batch = jobs(*[f"big-{i}" for i in range(30)], payload="z" * 600_000)
    handles = await client.enqueue_jobs(batch)
    assert len(handles) == 30
    for i in (0, 29):
        assert (await raw.get(f"big-{i}")).status == pb.JobStatus.SCHEDULED


def run_and_delete(raw: Raw, *ids: str) -> Between:
    """What happens while the first try's answer is lost: the jobs run, succeed and an operator
    deletes them."""
    async def between() -> None:
        tasks = (await raw.lease(max_tasks=len(ids))).tasks
        assert sorted(t.job_id for t in tasks) == sorted(ids)
        for task in tasks:
            await raw.report(task, success=pack("done"))
        for job_id in ids:
            await raw.action("DeleteJob", job_id)
    return between


async def assert_gone(raw: Raw, *ids: str) -> None:
    for job_id in ids:
        with pytest.raises(RpcError) as info:
            await raw.get(job_id)
        assert info.value.code == Code.NOT_FOUND
    assert not (await raw.lease(max_tasks=10)).tasks


async def test_single_enqueue_landed_then_deleted_is_not_created_twice(
    raw: Raw, address: str,
) -> None:
    """First try lands and its answer is lost; the job runs and is deleted; the client's retry
    (the same request id) is answered OK and must not create the job again."""
    async with lossy_client(address, "Enqueue", deliver=True,
                            between=run_and_delete(raw, "once")) as client:
        handle = await client.enqueue("g", {"n": 1}, id="once")
        assert handle.id == "once"
        [channel] = client._connector.channels  # type: ignore[attr-defined]
        first, retry = (pb.EnqueueRequest.parse(r) for r in channel.sent)
    assert first.request_id and retry.request_id == first.request_id
    await assert_gone(raw, "once")


async def test_batch_landed_then_deleted_is_not_created_twice(raw: Raw, address: str) -> None:
    async with lossy_client(address, "EnqueueBatch", deliver=True,
                            between=run_and_delete(raw, "d-1", "d-2")) as client:
        handles = await client.enqueue_jobs(jobs("d-1", "d-2"))
    assert [h.id for h in handles] == ["d-1", "d-2"]
    await assert_gone(raw, "d-1", "d-2")


async def test_later_try_of_a_batch_answers_deleted_per_job(raw: Raw) -> None:
    shard = await raw.shard()
    spec = pb.JobSpec(tenant="default", id="gone", task_group="g", payload=pack("v"))
    await raw("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard, jobs=[spec],
                                                     request_id=CALL), pb.EnqueueBatchResponse)
    await run_and_delete(raw, "gone")()
    fresh = pb.JobSpec(tenant="default", id="fresh", task_group="g", payload=pack("v"))
    resp = await raw("EnqueueBatch", pb.EnqueueBatchRequest(
        shard=shard, jobs=[fresh, spec], request_id=CALL), pb.EnqueueBatchResponse)
    assert [(r.id, r.code, r.existed, r.deleted) for r in resp.results] == [
        ("fresh", Code.OK, False, False), ("gone", Code.OK, True, True)]
    assert "deleted since" in resp.results[1].message
    await raw("EnqueueBatch", pb.EnqueueBatchRequest(
        shard=shard, jobs=[spec], request_id="b" * 32), pb.EnqueueBatchResponse)
    assert (await raw.get("gone")).status == pb.JobStatus.SCHEDULED  # a new call creates it


async def test_request_id_over_its_limit_is_invalid_argument(raw: Raw) -> None:
    shard = await raw.shard()
    spec = pb.JobSpec(tenant="default", id="long", task_group="g", payload=pack("v"))
    for method, req, resp_type in (
        ("Enqueue", pb.EnqueueRequest(shard=shard, job=spec, request_id="r" * 65),
         pb.EnqueueResponse),
        ("EnqueueBatch", pb.EnqueueBatchRequest(shard=shard, jobs=[spec], request_id="r" * 65),
         pb.EnqueueBatchResponse),
    ):
        with pytest.raises(RpcError) as info:
            await raw(method, req, resp_type)
        assert info.value.code == Code.INVALID_ARGUMENT
        assert "request_id_max_chars is 64" in info.value.message
    with pytest.raises(RpcError):
        await raw.get("long")


async def test_re_enqueue_after_delete_whose_answer_is_lost_is_created_once(
    raw: Raw, address: str,
) -> None:
    """Intentional re-enqueue after delete still works when its own first answer is lost."""
    await raw.enqueue("g", "v", id="again")
    await run_and_delete(raw, "again")()
    async with lossy_client(address, "Enqueue", deliver=True) as client:
        await client.enqueue("g", "v", id="again")
    assert (await raw.get("again")).status == pb.JobStatus.SCHEDULED
    assert len((await raw.lease(max_tasks=10)).tasks) == 1


async def test_re_enqueue_after_delete_whose_first_try_never_arrived_is_created(
    raw: Raw, address: str,
) -> None:
    """An identical job deliberately enqueued again after its delete, by a call whose first try
    fails without reaching the server: the retry carries the new call's request id, not the
    one that created the deleted job, so the job is created again."""
    async with lossy_client(address, "Enqueue", deliver=True,
                            between=run_and_delete(raw, "twice")) as client:
        await client.enqueue("g", "v", id="twice")
    await assert_gone(raw, "twice")
    async with lossy_client(address, "Enqueue", deliver=False) as client:
        await client.enqueue("g", "v", id="twice")
    assert (await raw.get("twice")).status == pb.JobStatus.SCHEDULED
    assert len((await raw.lease(max_tasks=10)).tasks) == 1

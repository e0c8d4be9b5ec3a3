"""JobHandle: one job, addressed by id and tenant."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from silo.client.types import Job, JobCancelled, JobFailed, unpack
from silo.errors import Code, InvalidArgument, SiloError
from silo.model import JobStatus
from silo.wire import attempt_from_pb, limit_from_pb, pb, retry_from_pb

if TYPE_CHECKING:
    from silo.client.client import SiloClient

RESULT_POLL_INITIAL_S = 0.05
RESULT_POLL_MAX_S = 1.0


class JobHandle:
    """Operations on one job. Every call routes to the job's shard and retries transient errors."""

    def __init__(self, client: SiloClient, id: str, tenant: str) -> None:
        self._client = client
        self.id = id
        self.tenant = tenant

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, tenant={self.tenant!r})"

    async def _ref(self) -> pb.JobRef:
        return pb.JobRef(shard=await self._client.shard_for(self.tenant), tenant=self.tenant,
                         id=self.id)

    async def _action(self, method: str, retried_ok: Any = None) -> None:
        ref = await self._ref()
        await self._client.call(
            method, pb.JobActionRequest(job=ref), pb.JobActionResponse, shard_id=ref.shard,
            retried_ok=retried_ok,
        )

    async def get(self, *, attempts: bool | int = False, attempts_before: int = 0) -> Job:
        """The job as stored. ``attempts=True`` includes its newest attempts (the server's
        default page, 100); ``attempts=N`` the newest N (at most 1000); ``attempts_before=K``
        only attempts numbered below K (the next page: the last number seen). ``attempts_total``
        of the result counts every stored attempt."""
        if isinstance(attempts, bool):
            include, max_attempts = attempts, 0
        else:
            if attempts < 1:
                raise InvalidArgument(f"attempts must be True, False or at least 1, not {attempts}")
            include, max_attempts = True, attempts
        ref = await self._ref()
        request = pb.GetJobRequest(job=ref, include_attempts=include, max_attempts=max_attempts,
                                   attempts_before=attempts_before)
        resp = await self._client.call("GetJob", request, pb.GetJobResponse, shard_id=ref.shard)
        j = resp.job
        assert j is not None
        return Job(
            id=j.id,
            tenant=j.tenant,
            task_group=j.task_group,
            payload=unpack(j.payload),
            priority=j.priority,
            retry=retry_from_pb(j.retry),
            metadata=dict(j.metadata),
            enqueued_at_ms=j.enqueued_at_ms,
            start_at_ms=j.start_at_ms,
            status=JobStatus(int(j.status)),
            status_changed_at_ms=j.status_changed_at_ms,
            next_attempt_at_ms=j.next_attempt_at_ms or None,
            attempt_count=j.attempt_count,
            cancel_requested=j.cancel_requested,
            cancelled_at_ms=j.cancelled_at_ms or None,
            attempts=tuple(attempt_from_pb(a) for a in j.attempts) if include else None,
            limits=tuple(limit_from_pb(x) for x in j.limits),
            waiting_for=j.waiting_for,
            attempts_total=j.attempts_total,
            undelivered_count=j.undelivered_count,
            timeout_ms=j.timeout_ms or None,
        )

    async def status(self) -> JobStatus:
        return (await self.get()).status

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish; return its decoded result.

        Raises :class:`JobFailed` (with the error code and decoded data) or
        :class:`JobCancelled`; ``trio.TooSlowError`` when ``timeout`` seconds pass first.
        """
        delay = RESULT_POLL_INITIAL_S
        with trio.fail_after(math.inf if timeout is None else timeout):
            while True:
                ref = await self._ref()
                try:
                    r = await self._client.call(
                        "GetJobResult", pb.GetJobResultRequest(job=ref), pb.GetJobResultResponse,
                        shard_id=ref.shard,
                    )
                except SiloError as exc:
                    if exc.code != Code.FAILED_PRECONDITION:
                        raise
                    await trio.sleep(delay)
                    delay = min(delay * 2, RESULT_POLL_MAX_S)
                    continue
                status = JobStatus(int(r.status))
                if status == JobStatus.SUCCEEDED:
                    return unpack(r.result)
                if status == JobStatus.FAILED:
                    raise JobFailed(self.id, r.error_code, _safe_unpack(r.error_data))
                raise JobCancelled(self.id, r.cancelled_at_ms)

    async def cancel(self) -> None:
        await self._action("CancelJob", retried_ok=_became(JobStatus.CANCELLED))

    async def restart(self) -> None:
        await self._action(
            "RestartJob", retried_ok=_became(JobStatus.SCHEDULED, JobStatus.RUNNING,
                                             JobStatus.SUCCEEDED)
        )

    async def expedite(self) -> None:
        await self._action("ExpediteJob", retried_ok=_became(JobStatus.RUNNING,
                                                             JobStatus.SUCCEEDED))

    async def delete(self) -> None:
        await self._action("DeleteJob", retried_ok=lambda e: e.code == Code.NOT_FOUND)


def _became(*statuses: JobStatus) -> Any:
    names = tuple(s.name for s in statuses)

    def ok(err: SiloError) -> bool:
        return err.code == Code.FAILED_PRECONDITION and err.message.endswith(names)

    return ok


def _safe_unpack(data: bytes) -> Any:
    try:
        return unpack(data)
    except Exception:
        return data

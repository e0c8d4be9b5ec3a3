"""JobHandle: one job, addressed by id and tenant, for the trio and asyncio clients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from silo.client import messages
from silo.client.types import Job
from silo.errors import SiloError
from silo.model import JobStatus
from silo.wire import pb

if TYPE_CHECKING:
    from silo.client.core import ClientCore

RESULT_POLL_INITIAL_S = messages.RESULT_POLL_INITIAL_S
RESULT_POLL_MAX_S = messages.RESULT_POLL_MAX_S


class JobHandle:
    """Operations on one job. Every call routes to the job's shard and retries transient
    errors; the handle runs on its client's event loop."""

    def __init__(self, client: ClientCore, id: str, tenant: str) -> None:
        self._client = client
        self.id = id
        self.tenant = tenant

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, tenant={self.tenant!r})"

    async def _ref(self) -> pb.JobRef:
        return messages.job_ref(await self._client.shard_for(self.tenant), self.tenant, self.id)

    async def _action(self, action: str) -> None:
        method, retried_ok = messages.ACTIONS[action]
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
        ref = await self._ref()
        request = messages.get_job_request(ref, attempts, attempts_before)
        resp = await self._client.call("GetJob", request, pb.GetJobResponse, shard_id=ref.shard)
        return messages.job_from_response(resp, request.include_attempts)

    async def status(self) -> JobStatus:
        return (await self.get()).status

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish; return its decoded result.

        Raises :class:`JobFailed` (with the error code and decoded data) or
        :class:`JobCancelled`; when ``timeout`` seconds pass first, the loop's timeout error
        (``trio.TooSlowError`` on trio, ``TimeoutError`` on asyncio).
        """
        return await self._client.backend.within(timeout, self._poll_result)

    async def _poll_result(self) -> Any:
        delay_s = RESULT_POLL_INITIAL_S
        while True:
            ref = await self._ref()
            try:
                r = await self._client.call(
                    "GetJobResult", pb.GetJobResultRequest(job=ref), pb.GetJobResultResponse,
                    shard_id=ref.shard,
                )
            except SiloError as exc:
                if not messages.result_pending(exc):
                    raise
                await self._client.backend.sleep(delay_s)
                delay_s = messages.next_poll_delay_s(delay_s)
                continue
            return messages.result_from_response(self.id, r)

    async def cancel(self) -> None:
        await self._action("cancel")

    async def restart(self) -> None:
        await self._action("restart")

    async def expedite(self) -> None:
        await self._action("expedite")

    async def delete(self) -> None:
        await self._action("delete")

"""BlockingSiloClient: the client for blocking code (Django, Flask, scripts, threads).

The same methods, arguments, routing, retries and idempotent ids as the trio and asyncio
clients, as plain blocking calls: each runs the :class:`~silo.client.AsyncioSiloClient`'s
coroutine on a background event-loop thread (:class:`silo.transport.loop_thread.LoopThread`)
and waits for it. Handles are :class:`BlockingJobHandle` (the same methods as
:class:`~silo.client.JobHandle`, blocking); ``result(timeout=...)`` raises ``TimeoutError``.

Thread-safe: any number of threads may share one client (their calls run concurrently on the
loop thread, over one connection per node). The loop thread starts on the first call, so a
client made at import time in a pre-forking server is fine as long as it is first used in the
worker processes. Close it with :meth:`close` or a ``with`` block::

    with BlockingSiloClient.connect("127.0.0.1:7450") as client:
        job = client.enqueue("emails", {"to": "ada@example.com"})
        print(job.result(timeout=30))
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from silo.client.asyncio_client import AsyncioSiloClient
from silo.client.core import DEFAULT_ADDRESS, MAX_MESSAGE_BYTES
from silo.client.handle import JobHandle
from silo.client.messages import ENQUEUE_BATCH_MAX_BYTES, ENQUEUE_BATCH_MAX_JOBS
from silo.client.retrying import RetrySettings
from silo.client.types import Job
from silo.cluster.shard_map import ShardMap
from silo.errors import SiloError
from silo.model import DEFAULT_PRIORITY, JobStatus, Limit, NewJob, RetryPolicy
from silo.rpc import Connector
from silo.transport.asyncio_grpc import AsyncioGrpcConnector
from silo.transport.loop_thread import LoopThread
from silo.wire import pb

__all__ = ["BlockingJobHandle", "BlockingSiloClient"]

M = TypeVar("M")
T = TypeVar("T")


class BlockingSiloClient:
    """A connection to a silo cluster from blocking code. Use :meth:`connect` (real network)
    or construct it with a :class:`~silo.rpc.Connector` whose channels run on asyncio (it is
    used on the client's loop thread); construction does no I/O."""

    def __init__(
        self,
        connector: Connector,
        seeds: Sequence[str],
        *,
        token: str | None = None,
        rng: random.Random | None = None,
        retry: RetrySettings | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._async = AsyncioSiloClient(connector, seeds, token=token, rng=rng, retry=retry,
                                        max_message_bytes=max_message_bytes)
        self._connector = connector
        self._loop = LoopThread()
        self._owned_connector: AsyncioGrpcConnector | None = None

    @classmethod
    def connect(
        cls, *addresses: str, token: str | None = None, retry: RetrySettings | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> BlockingSiloClient:
        """Connect over gRPC to a cluster reachable at any of ``addresses`` ("host:port";
        default 127.0.0.1:7450) and fetch the shard map; use the client in a ``with`` block or
        :meth:`close` it."""
        connector = AsyncioGrpcConnector(token=token, max_message_bytes=max_message_bytes)
        client = cls(connector, addresses or (DEFAULT_ADDRESS,), token=token, retry=retry,
                     max_message_bytes=max_message_bytes)
        client._owned_connector = connector
        try:
            client.refresh_shard_map()
        except BaseException:
            client.close()
            raise
        return client

    def close(self) -> None:
        """Close the connections and stop the loop thread; calls still running fail. Idempotent;
        a call after close raises RuntimeError."""
        self._loop.close(self._aclose)

    async def _aclose(self) -> None:
        await self._async.aclose()
        if self._owned_connector is not None:
            await self._owned_connector.aclose()

    def __enter__(self) -> BlockingSiloClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        return self._loop.run(lambda: fn(*args, **kwargs))

    @property
    def retry(self) -> RetrySettings:
        return self._async.retry

    @property
    def max_message_bytes(self) -> int:
        return self._async.max_message_bytes

    # -- ids --------------------------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh job id (128 random bits, hex)."""
        return self._run(_value, self._async.new_id)

    def new_request_id(self) -> str:
        """A fresh enqueue request id, as :meth:`ClientCore.new_request_id` draws one."""
        return self._run(_value, self._async.new_request_id)

    # -- low-level calls --------------------------------------------------------------------

    def call_address(
        self, address: str, method: str, request: Any, response_type: type[M],
        *, timeout: float | None = None,
    ) -> M:
        """One attempt of ``method`` against ``address`` (raises RpcError)."""
        return self._run(self._async.call_address, address, method, request, response_type,
                         timeout=timeout)

    def call(
        self,
        method: str,
        request: Any,
        response_type: type[M],
        *,
        shard_id: int | None = None,
        retried_ok: Callable[[SiloError], bool] | None = None,
        timeout: float | None = None,
    ) -> M:
        """Call ``method`` on the owner of ``shard_id`` with retries (see
        :meth:`ClientCore.call`); ``retried_ok`` runs on the loop thread."""
        return self._run(self._async.call, method, request, response_type, shard_id=shard_id,
                         retried_ok=retried_ok, timeout=timeout)

    # -- shard map --------------------------------------------------------------------------

    def refresh_shard_map(self, *, force: bool = False) -> ShardMap:
        """Fetch the shard map and owners from any reachable node."""
        return self._run(self._async.refresh_shard_map, force=force)

    def cluster_info(self) -> pb.GetClusterInfoResponse:
        """The cluster as a node reports it; the client's routing takes it as its shard map."""
        return self._run(self._async.cluster_info)

    def owner_address(
        self, shard_id: int, *, stale: str | None = None, hint: str | None = None
    ) -> str:
        """The address to call for ``shard_id`` (see :meth:`ClientCore.owner_address`)."""
        return self._run(self._async.owner_address, shard_id, stale=stale, hint=hint)

    @property
    def shard_map(self) -> ShardMap | None:
        return self._async.shard_map

    def owner_addresses(self) -> list[str]:
        """Distinct addresses of the nodes that own shards (the seeds when none are known)."""
        return self._run(_value, self._async.owner_addresses)

    def shard_for(self, tenant: str) -> int:
        return self._run(self._async.shard_for, tenant)

    # -- jobs -------------------------------------------------------------------------------

    def enqueue(
        self,
        task_group: str,
        payload: Any = None,
        *,
        tenant: str | None = None,
        id: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        start_at_ms: int | None = None,
        retry: RetryPolicy | None = None,
        metadata: dict[str, str] | None = None,
        limits: Sequence[Limit] = (),
        timeout_ms: int | None = None,
    ) -> BlockingJobHandle:
        """Enqueue one job; returns its handle (see :meth:`ClientCore.enqueue`)."""
        handle = self._run(
            self._async.enqueue, task_group, payload, tenant=tenant, id=id, priority=priority,
            start_at_ms=start_at_ms, retry=retry, metadata=metadata, limits=limits,
            timeout_ms=timeout_ms,
        )
        return BlockingJobHandle(self, handle)

    def enqueue_jobs(
        self, jobs: Sequence[NewJob], *, max_batch_jobs: int = ENQUEUE_BATCH_MAX_JOBS,
        max_batch_bytes: int = ENQUEUE_BATCH_MAX_BYTES,
    ) -> list[BlockingJobHandle]:
        """Enqueue prepared jobs in as few RPCs as possible (see
        :meth:`ClientCore.enqueue_jobs`)."""
        handles = self._run(self._async.enqueue_jobs, jobs, max_batch_jobs=max_batch_jobs,
                            max_batch_bytes=max_batch_bytes)
        return [BlockingJobHandle(self, h) for h in handles]

    def queue(self, key: str, tenant: str | None = None) -> pb.GetQueueResponse:
        """A concurrency queue's max, holders and waiting jobs."""
        return self._run(self._async.queue, key, tenant)

    def job(self, id: str, tenant: str | None = None) -> BlockingJobHandle:
        """A handle for an existing job."""
        return BlockingJobHandle(self, self._async.job(id, tenant))


class BlockingJobHandle:
    """Operations on one job, blocking (see :class:`~silo.client.JobHandle`)."""

    def __init__(self, client: BlockingSiloClient, handle: JobHandle) -> None:
        self._client = client
        self._handle = handle
        self.id = handle.id
        self.tenant = handle.tenant

    def __repr__(self) -> str:
        return f"BlockingJobHandle(id={self.id!r}, tenant={self.tenant!r})"

    def get(self, *, attempts: bool | int = False, attempts_before: int = 0) -> Job:
        """The job as stored (see :meth:`JobHandle.get`)."""
        return self._client._run(self._handle.get, attempts=attempts,
                                 attempts_before=attempts_before)

    def status(self) -> JobStatus:
        return self._client._run(self._handle.status)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish; return its decoded result. Raises JobFailed,
        JobCancelled, or ``TimeoutError`` when ``timeout`` seconds pass first."""
        return self._client._run(self._handle.result, timeout)

    def cancel(self) -> None:
        self._client._run(self._handle.cancel)

    def restart(self) -> None:
        self._client._run(self._handle.restart)

    def expedite(self) -> None:
        self._client._run(self._handle.expedite)

    def delete(self) -> None:
        self._client._run(self._handle.delete)


async def _value(fn: Callable[[], T]) -> T:
    """``fn()`` on the loop thread (for methods that touch the client's state)."""
    return fn()

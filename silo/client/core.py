"""ClientCore: every client method, written once for any event loop.

Routing: the client fetches the shard map from any node, hashes the tenant with xxh64 to find
its shard, and calls the shard's owner. A "shard not found" answer carries the owner's address
when the node knows it; otherwise the client refreshes the map. UNAVAILABLE and
DEADLINE_EXCEEDED are retried with bounded exponential backoff (:mod:`silo.client.routing`,
:mod:`silo.client.retrying`).

Enqueue retries: the client always sends a job id, and the server stores a fingerprint of each
job it accepts. A retried enqueue whose first try did land is answered OK (the same job, same
fingerprint, is already stored: ``existed``); ALREADY_EXISTS means a *different* job holds the
id, and is raised as an error, never taken as success. Each enqueue call draws a random request
id (128 bits, hex) and sends the same id on every try of that call; the server keeps it with
each job the call creates, and with the job's fingerprint when the job is deleted. So if a try
did land and the job has been deleted since (it ran, an operator deleted it), a later try of
the same call is answered OK (``existed``, ``deleted``) and the job is not created twice, and
a new call (a new request id) that enqueues an identical job after its delete creates it again,
as asked, whether or not its own first try arrived.

The core awaits only its channels (from a :class:`~silo.rpc.Connector`) and an
:class:`~silo.client.backend.AsyncBackend` (sleep, lock, timeout), so the same code is the trio
:class:`~silo.client.SiloClient` and the asyncio :class:`~silo.client.AsyncioSiloClient`; the
blocking :class:`~silo.client.BlockingSiloClient` runs the asyncio one on a loop thread. The
pure parts (requests, decoding, routing and retry decisions) live in their own modules.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, TypeVar

from silo.client import messages
from silo.client.backend import AsyncBackend
from silo.client.handle import JobHandle
from silo.client.messages import ENQUEUE_BATCH_MAX_BYTES, ENQUEUE_BATCH_MAX_JOBS
from silo.client.retrying import CallTries, Next, RetrySettings, map_fetch_fails
from silo.client.routing import Routing
from silo.cluster.shard_map import ShardMap
from silo.errors import SiloError, Unavailable
from silo.model import DEFAULT_PRIORITY, DEFAULT_TENANT, Limit, NewJob, RetryPolicy
from silo.rpc import Channel, Connector, RpcError, method_path
from silo.runtime.rand import RandomSource
from silo.wire import pb

M = TypeVar("M")
C = TypeVar("C", bound="ClientCore")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest request or response a client sends or accepts by default (the server's default
``max_message_bytes`` as well)."""

DEFAULT_ADDRESS = "127.0.0.1:7450"


class ClientCore:
    """A connection to a silo cluster, on the event loop of :attr:`backend`. Subclasses pick
    the loop (``backend``) and the transport (:meth:`open_connector`); construct one with any
    :class:`~silo.rpc.Connector` whose channels run on that loop, or use :meth:`connect`.

    Enqueues are safe to retry: every try of one enqueue call carries the call's request id,
    so a job whose first try landed is neither duplicated nor, if it was deleted before a
    later try arrived, created again; a new call always creates its job if the id holds none
    (see the module docstring)."""

    backend: ClassVar[AsyncBackend]

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
        self._routing = Routing(seeds)
        self._connector = connector
        self._token = token
        self._rng = rng or RandomSource().stream("client")
        self.retry = retry or RetrySettings()
        self.max_message_bytes = max_message_bytes
        """Requests are built to stay under this (the transport refuses larger ones)."""
        self._channels: dict[str, Channel] = {}
        self._map_lock = self.backend.lock()

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def open_connector(
        cls, *, token: str | None, max_message_bytes: int
    ) -> AbstractAsyncContextManager[Connector]:
        """The real network's connector for this client's loop, closed on exit."""
        raise NotImplementedError

    @classmethod
    @asynccontextmanager
    async def connect(
        cls: type[C], *addresses: str, token: str | None = None,
        retry: RetrySettings | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> AsyncIterator[C]:
        """Connect over gRPC to a cluster reachable at any of ``addresses`` ("host:port";
        default 127.0.0.1:7450); the shard map is fetched before the block starts."""
        opened = cls.open_connector(token=token, max_message_bytes=max_message_bytes)
        async with opened as connector:
            client = cls(connector, addresses or (DEFAULT_ADDRESS,), token=token, retry=retry,
                         max_message_bytes=max_message_bytes)
            try:
                await client.refresh_shard_map()
                yield client
            finally:
                await client.aclose()

    async def aclose(self) -> None:
        """Close the channels this client opened (calls in flight fail). Idempotent."""
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await self.backend.shielded(ch.aclose)

    # -- ids --------------------------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh job id (128 random bits, hex)."""
        return messages.random_hex_id(self._rng)

    def new_request_id(self) -> str:
        """A fresh enqueue request id (128 random bits, hex: 32 characters, under the server's
        ``request_id_max_chars``), drawn once per enqueue call and sent on each of its tries."""
        return messages.random_hex_id(self._rng)

    # -- low-level calls --------------------------------------------------------------------

    async def _channel(self, address: str) -> Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = await self._connector.connect(address)
            self._channels[address] = ch
        return ch

    async def call_address(
        self, address: str, method: str, request: Any, response_type: type[M],
        *, timeout: float | None = None,
    ) -> M:
        """One attempt of ``method`` against ``address`` (raises RpcError)."""
        ch = await self._channel(address)
        meta = {"authorization": f"Bearer {self._token}"} if self._token else None
        data = await ch.call(
            method_path(method), bytes(request), timeout=timeout or self.retry.call_timeout_s,
            metadata=meta,
        )
        return response_type.parse(data)  # type: ignore[attr-defined,no-any-return]

    async def _backoff(self, attempt: int) -> None:
        await self.backend.sleep(self.retry.backoff_s(attempt, self._rng))

    async def call(
        self,
        method: str,
        request: Any,
        response_type: type[M],
        *,
        shard_id: int | None = None,
        retried_ok: Callable[[SiloError], bool] | None = None,
        timeout: float | None = None,
    ) -> M:
        """Call ``method`` on the owner of ``shard_id`` (any node when None), retrying transient
        failures and following owner hints; every try sends the same ``request``.
        ``retried_ok(err)`` says whether an error seen on a retry (after an ambiguous failure)
        means the first try already took effect."""
        tries = CallTries(shard_id, retried_ok)
        for attempt in range(self.retry.attempts):
            if shard_id is not None and self._routing.shard_map is None:
                await self.refresh_shard_map()
            address = self._routing.address_for(shard_id, attempt)
            try:
                return await self.call_address(address, method, request, response_type,
                                               timeout=timeout)
            except RpcError as exc:
                step = tries.after_error(exc, address, attempt, self._routing)
            if step is Next.CALL_HINTED_OWNER:
                continue
            if step is Next.SUCCEED:
                return response_type()
            if step is Next.FAIL:
                assert tries.last is not None
                raise tries.last from None
            if step is Next.REFRESH_MAP:
                await self.refresh_shard_map(force=True)
            await self._backoff(attempt)
        assert tries.last is not None
        raise tries.last

    # -- shard map --------------------------------------------------------------------------

    async def refresh_shard_map(self, *, force: bool = False) -> ShardMap:
        """Fetch the shard map and owners from any reachable node."""
        async with self._map_lock:
            if self._routing.shard_map is not None and not force:
                return self._routing.shard_map
            info = await self._fetch_cluster_info()
            return self._routing.learn(info)

    async def _fetch_cluster_info(self) -> pb.GetClusterInfoResponse:
        last: SiloError | None = None
        for attempt in range(self.retry.attempts):
            address = self._routing.seed(attempt)
            try:
                return await self.call_address(
                    address, "GetClusterInfo", pb.GetClusterInfoRequest(),
                    pb.GetClusterInfoResponse,
                )
            except RpcError as exc:
                last = exc.to_silo_error()
                if map_fetch_fails(exc):
                    raise last from None
            await self._backoff(attempt)
        raise last or Unavailable("no server reachable")

    async def cluster_info(self) -> pb.GetClusterInfoResponse:
        """The cluster as a node reports it (map version, each shard's range and owner); the
        client's routing takes it as its new shard map."""
        async with self._map_lock:
            info = await self._fetch_cluster_info()
            self._routing.learn(info)
            return info

    async def owner_address(
        self, shard_id: int, *, stale: str | None = None, hint: str | None = None
    ) -> str:
        """The address to call for ``shard_id``. After ``stale`` answered "shard not found",
        pass it with the owner ``hint`` that answer carried (if any): a hint naming another node
        is followed; otherwise the shard map is fetched again (a failure to fetch it keeps the
        old one). Falls back to a seed address when no owner is known."""
        if hint and hint != stale:
            self._routing.follow_hint(shard_id, hint)
            return hint
        if stale is not None or self._routing.shard_map is None:
            try:
                await self.refresh_shard_map(force=True)
            except SiloError:
                pass
        return self._routing.owner_or_seed(shard_id)

    @property
    def shard_map(self) -> ShardMap | None:
        return self._routing.shard_map

    def owner_addresses(self) -> list[str]:
        """Distinct addresses of the nodes that own shards (the seeds when none are known)."""
        return self._routing.owner_addresses()

    async def shard_for(self, tenant: str) -> int:
        shard_map = self._routing.shard_map or await self.refresh_shard_map()
        return shard_map.shard_for_tenant(tenant).shard_id

    # -- jobs -------------------------------------------------------------------------------

    async def enqueue(
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
    ) -> JobHandle:
        """Enqueue one job; returns its handle. ``payload`` is any msgpack-serialisable value.
        ``limits`` (ConcurrencyLimit, FloatingConcurrencyLimit, RateLimit) are acquired in
        order, scoped to the job's tenant. ``timeout_ms``: how long one attempt may run before
        the worker fails it with ``TIMEOUT`` (None: the worker's default; the server bounds it
        by its ``max_timeout_ms``)."""
        job = messages.new_job(
            task_group, payload, tenant=tenant, job_id=id or self.new_id(), priority=priority,
            start_at_ms=start_at_ms, retry=retry, metadata=metadata, limits=limits,
            timeout_ms=timeout_ms,
        )
        return (await self.enqueue_jobs([job]))[0]

    async def enqueue_jobs(
        self, jobs: Sequence[NewJob], *, max_batch_jobs: int = ENQUEUE_BATCH_MAX_JOBS,
        max_batch_bytes: int = ENQUEUE_BATCH_MAX_BYTES,
    ) -> list[JobHandle]:
        """Enqueue prepared jobs (payloads already msgpack bytes) in as few RPCs as possible:
        per shard, EnqueueBatch calls of at most ``max_batch_jobs`` jobs and ``max_batch_bytes``
        encoded bytes. Jobs without an id get one.

        Each call is atomic (all of its jobs are stored, or none), but the calls are not: if a
        call is refused, the calls before it stay enqueued. A refused call raises the error of
        the first job that caused the refusal (e.g. ALREADY_EXISTS: a different job holds that
        id); a job already stored identically (a retry of an earlier call) counts as enqueued,
        and so does one that a try of this call whose answer was lost created and that has been
        deleted since (it is not created twice). Every RPC of this call, and every try of each,
        carries one request id drawn for the call (see the module docstring).
        """
        jobs = messages.with_ids(jobs, self.new_id)
        request_id = self.new_request_id()
        by_shard: dict[int, list[NewJob]] = {}
        for job in jobs:
            by_shard.setdefault(await self.shard_for(job.tenant), []).append(job)
        for shard_id in sorted(by_shard):
            group = by_shard[shard_id]
            if len(group) == 1:
                await self.call(
                    "Enqueue", messages.enqueue_request(shard_id, group[0], request_id),
                    pb.EnqueueResponse, shard_id=shard_id,
                )
                continue
            for request in messages.enqueue_batch_requests(
                shard_id, group, request_id, max_batch_jobs, max_batch_bytes
            ):
                resp = await self.call("EnqueueBatch", request, pb.EnqueueBatchResponse,
                                       shard_id=shard_id)
                messages.raise_refused(request.jobs, resp)
        return [JobHandle(self, j.job_id or "", j.tenant) for j in jobs]

    async def queue(self, key: str, tenant: str | None = None) -> pb.GetQueueResponse:
        """A concurrency queue's max, holders and waiting jobs."""
        tenant = tenant or DEFAULT_TENANT
        shard_id = await self.shard_for(tenant)
        return await self.call(
            "GetQueue", pb.GetQueueRequest(shard=shard_id, tenant=tenant, key=key),
            pb.GetQueueResponse, shard_id=shard_id,
        )

    def job(self, id: str, tenant: str | None = None) -> JobHandle:
        """A handle for an existing job."""
        messages.check_job_id(id)
        return JobHandle(self, id, tenant or DEFAULT_TENANT)

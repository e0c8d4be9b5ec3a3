"""SiloClient: routes job calls to the owning node, retries transient failures.

Routing: the client fetches the shard map from any node, hashes the tenant with xxh64 to find
its shard, and calls the shard's owner. A "shard not found" answer carries the owner's address
when the node knows it; otherwise the client refreshes the map. UNAVAILABLE and
DEADLINE_EXCEEDED are retried with bounded exponential backoff.

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
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from silo.cluster.shard_map import HASH_SPACE, ShardMap, ShardRange
from silo.errors import Code, InvalidArgument, SiloError, Unavailable, error_for_code, quote
from silo.model import DEFAULT_PRIORITY, DEFAULT_TENANT, Limit, NewJob, RetryPolicy
from silo.node import SHARD_OWNER_METADATA
from silo.rpc import Channel, Connector, RpcError, method_path
from silo.runtime.rand import RandomSource
from silo.wire import new_job_to_pb, pb

M = TypeVar("M")

RETRYABLE = (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest request or response a client sends or accepts by default (the server's default
``max_message_bytes`` as well)."""

ENQUEUE_BATCH_MAX_JOBS = 1000
"""Jobs per EnqueueBatch call (the server's default ``max_jobs_per_batch``)."""

ENQUEUE_BATCH_MAX_BYTES = 8 * 1024 * 1024
"""Encoded job bytes per EnqueueBatch call, well under the 16 MiB message cap. A single job
larger than this goes in a call of its own."""


@dataclass(frozen=True)
class RetrySettings:
    """How the client retries transient failures."""

    attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    call_timeout_s: float = 10.0


class SiloClient:
    """A connection to a silo cluster. Use :meth:`connect` (real network) or construct it with
    any :class:`~silo.rpc.Connector` (the simulator's).

    Enqueues are safe to retry: every try of one enqueue call carries the call's request id,
    so a job whose first try landed is neither duplicated nor, if it was deleted before a
    later try arrived, created again; a new call always creates its job if the id holds none
    (see the module docstring)."""

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
        if not seeds:
            raise ValueError("at least one server address is required")
        self._connector = connector
        self._seeds = list(seeds)
        self._token = token
        self._rng = rng or RandomSource().stream("client")
        self.retry = retry or RetrySettings()
        self.max_message_bytes = max_message_bytes
        """Requests are built to stay under this (the transport refuses larger ones)."""
        self._channels: dict[str, Channel] = {}
        self._shard_map: ShardMap | None = None
        self._owners: dict[int, str] = {}
        self._map_lock = trio.Lock()

    # -- construction -----------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, *addresses: str, token: str | None = None, retry: RetrySettings | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> AsyncIterator[SiloClient]:
        """Connect over gRPC to a cluster reachable at any of ``addresses`` ("host:port")."""
        from silo.transport.grpc import GrpcConnector

        opened = GrpcConnector.open(token=token, max_message_bytes=max_message_bytes)
        async with opened as connector:
            client = cls(connector, addresses or ("127.0.0.1:7450",), token=token, retry=retry,
                         max_message_bytes=max_message_bytes)
            try:
                await client.refresh_shard_map()
                yield client
            finally:
                await client.aclose()

    async def aclose(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            with trio.CancelScope(shield=True):
                await ch.aclose()

    # -- ids --------------------------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh job id (128 random bits, hex)."""
        return f"{self._rng.getrandbits(128):032x}"

    def new_request_id(self) -> str:
        """A fresh enqueue request id (128 random bits, hex: 32 characters, under the server's
        ``request_id_max_chars``), drawn once per enqueue call and sent on each of its tries."""
        return f"{self._rng.getrandbits(128):032x}"

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
        base = min(self.retry.initial_backoff_s * (2**attempt), self.retry.max_backoff_s)
        await trio.sleep(base * (0.5 + self._rng.random() / 2))

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
        ambiguous = False
        last: SiloError | None = None
        for attempt in range(self.retry.attempts):
            address = await self._address_for(shard_id, attempt)
            try:
                return await self.call_address(address, method, request, response_type,
                                               timeout=timeout)
            except RpcError as exc:
                err = exc.to_silo_error()
                if exc.code in RETRYABLE:
                    ambiguous = True
                    last = err
                    if shard_id is not None and attempt >= 1:
                        self._owners.pop(shard_id, None)
                elif exc.code == Code.NOT_FOUND and exc.message.startswith("shard not found"):
                    last = err
                    hint = exc.metadata.get(SHARD_OWNER_METADATA)
                    if shard_id is not None and hint and hint != address:
                        self._owners[shard_id] = hint
                        continue
                    await self.refresh_shard_map(force=True)
                else:
                    if ambiguous and retried_ok is not None and retried_ok(err):
                        return response_type()
                    raise err from None
            await self._backoff(attempt)
        assert last is not None
        raise last

    async def _address_for(self, shard_id: int | None, attempt: int) -> str:
        if shard_id is not None:
            if self._shard_map is None:
                await self.refresh_shard_map()
            owner = self._owners.get(shard_id)
            if owner:
                return owner
        return self._seeds[attempt % len(self._seeds)]

    # -- shard map --------------------------------------------------------------------------

    async def refresh_shard_map(self, *, force: bool = False) -> ShardMap:
        """Fetch the shard map and owners from any reachable node."""
        async with self._map_lock:
            if self._shard_map is not None and not force:
                return self._shard_map
            last: SiloError | None = None
            for attempt in range(self.retry.attempts):
                address = self._seeds[attempt % len(self._seeds)]
                try:
                    info = await self.call_address(
                        address, "GetClusterInfo", pb.GetClusterInfoRequest(),
                        pb.GetClusterInfoResponse,
                    )
                except RpcError as exc:
                    last = exc.to_silo_error()
                    if exc.code not in RETRYABLE:
                        raise last from None
                    await self._backoff(attempt)
                    continue
                ranges = tuple(
                    ShardRange(s.id, s.range_start, HASH_SPACE if s.range_end_max else s.range_end)
                    for s in info.shards
                )
                self._shard_map = ShardMap(info.map_version, ranges)
                self._owners = {s.id: s.owner_address for s in info.shards if s.owner_address}
                return self._shard_map
            raise last or Unavailable("no server reachable")

    async def owner_address(
        self, shard_id: int, *, stale: str | None = None, hint: str | None = None
    ) -> str:
        """The address to call for ``shard_id``. After ``stale`` answered "shard not found",
        pass it with the owner ``hint`` that answer carried (if any): a hint naming another node
        is followed; otherwise the shard map is fetched again (a failure to fetch it keeps the
        old one). Falls back to a seed address when no owner is known."""
        if hint and hint != stale:
            self._owners[shard_id] = hint
            return hint
        if stale is not None or self._shard_map is None:
            try:
                await self.refresh_shard_map(force=True)
            except SiloError:
                pass
        return self._owners.get(shard_id) or self._seeds[shard_id % len(self._seeds)]

    @property
    def shard_map(self) -> ShardMap | None:
        return self._shard_map

    def owner_addresses(self) -> list[str]:
        """Distinct addresses of the nodes that own shards (the seeds when none are known)."""
        found = sorted(set(self._owners.values()))
        return found or list(self._seeds)

    async def shard_for(self, tenant: str) -> int:
        shard_map = self._shard_map or await self.refresh_shard_map()
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
        from silo.client.types import pack

        if timeout_ms is not None and (
            isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 1
        ):
            raise InvalidArgument(f"timeout_ms must be a positive integer, got {timeout_ms!r}")

        job = NewJob(
            task_group=task_group,
            payload=pack(payload),
            tenant=tenant or DEFAULT_TENANT,
            job_id=id or self.new_id(),
            priority=priority,
            start_at_ms=start_at_ms or 0,
            retry=retry or RetryPolicy(),
            metadata=dict(metadata or {}),
            limits=tuple(limits),
            timeout_ms=timeout_ms or 0,
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
        jobs = [j if j.job_id else _with_id(j, self.new_id()) for j in jobs]
        request_id = self.new_request_id()
        by_shard: dict[int, list[NewJob]] = {}
        for job in jobs:
            by_shard.setdefault(await self.shard_for(job.tenant), []).append(job)
        for shard_id in sorted(by_shard):
            group = by_shard[shard_id]
            if len(group) == 1:
                await self.call(
                    "Enqueue", pb.EnqueueRequest(shard=shard_id, job=new_job_to_pb(group[0]),
                                                 request_id=request_id),
                    pb.EnqueueResponse, shard_id=shard_id,
                )
                continue
            specs = [new_job_to_pb(j) for j in group]
            for chunk in batch_chunks(specs, max_batch_jobs, max_batch_bytes):
                resp = await self.call(
                    "EnqueueBatch", pb.EnqueueBatchRequest(shard=shard_id, jobs=chunk,
                                                           request_id=request_id),
                    pb.EnqueueBatchResponse, shard_id=shard_id,
                )
                raise_refused(chunk, resp)
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
        if not id:
            raise InvalidArgument("job id is required")
        return JobHandle(self, id, tenant or DEFAULT_TENANT)


def _with_id(job: NewJob, job_id: str) -> NewJob:
    from dataclasses import replace

    return replace(job, job_id=job_id)


def batch_chunks(
    specs: Sequence[pb.JobSpec], max_jobs: int, max_bytes: int
) -> list[list[pb.JobSpec]]:
    """``specs`` in order, cut into runs of at most ``max_jobs`` jobs and ``max_bytes`` encoded
    bytes (a job larger than ``max_bytes`` alone makes a run)."""
    chunks: list[list[pb.JobSpec]] = []
    current: list[pb.JobSpec] = []
    size = 0
    for spec in specs:
        n = len(bytes(spec)) + 8  # the field tag and length prefix of a repeated message
        if current and (len(current) >= max_jobs or size + n > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(spec)
        size += n
    if current:
        chunks.append(current)
    return chunks


def raise_refused(specs: Sequence[pb.JobSpec], resp: pb.EnqueueBatchResponse) -> None:
    """Raise the error of the first job whose refusal held the batch back (not one that was
    only held back: ABORTED), if any job of the batch was not enqueued."""
    if len(resp.results) != len(specs):
        if len(resp.ids) == len(specs) and not resp.results:
            return  # a server that reports no per-job results answers OK only when all stored
        raise SiloError(f"EnqueueBatch answered {len(resp.results)} results for "
                        f"{len(specs)} jobs")
    refused = [r for r in resp.results if r.code != Code.OK]
    if not refused:
        return
    cause = next((r for r in refused if r.code != Code.ABORTED), refused[0])
    raise error_for_code(
        cause.code,
        f"job {quote(cause.id)} refused ({len(refused)} of {len(specs)} jobs of the batch not "
        f"enqueued): {cause.message}",
    )


from silo.client.handle import JobHandle  # noqa: E402  (cycle: the handle calls the client)

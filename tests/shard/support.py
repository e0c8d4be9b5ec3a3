"""Shared helpers for the shard tests: a controllable world (clock + disk) and small shortcuts."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace

import msgpack
import trio

from silo import keys
from silo.keys import Prefix
from silo.model import (
    DEFAULT_TENANT,
    PARKED,
    READY,
    TIMER,
    JobStatus,
    LeasedTask,
    Limit,
    NewJob,
    Outcome,
    OutcomeReport,
    RetryPolicy,
)
from silo.runtime import Faults, RandomSource, Runtime
from silo.runtime.leveldb import LevelDBDisk
from silo.shard import JobShard, ShardConfig, open_shard
from sim.disk import MemoryDisk

EPOCH_MS = 1_700_000_000_000
LEASE_MS = 30_000
WORKER = "worker-1"
GROUP = "g"


class World(trio.abc.Clock):
    """What a shard test controls: time, randomness and the disk.

    The world is both the shard's wall clock (``now_ms``) and trio's clock: pytest-trio runs a
    test that takes a ``World`` fixture under it. Time stands still until :meth:`advance`, which
    moves wall time and trio time together, so the shard's timer and reaper loops never wake on
    their own in the middle of a test, and do wake (as in production) once a test advances past
    a deadline.
    """

    def __init__(
        self, kind: str, root: str, *, seed: int = 0, faults: Faults | None = None,
        config: ShardConfig | None = None, trio_follows: bool = True,
    ) -> None:
        self.kind = kind
        # With trio_follows=False only wall time moves: the shard's loops then act only when an
        # event wakes them, never because a test advanced the clock.
        self.trio_follows = trio_follows
        self._trio_ms = 0
        # Fault points fire only once a test sets a rate (``world.faults.rates[...] = p``).
        self.faults = faults if faults is not None else Faults(random.Random(seed))
        if kind == "memory":
            self.disk: MemoryDisk | LevelDBDisk = MemoryDisk(random.Random(seed), self.faults)
        elif kind == "leveldb":
            self.disk = LevelDBDisk()
        else:
            raise ValueError(kind)
        self.path = f"{root}/shard-0"
        self.config = config or ShardConfig(lease_ms=LEASE_MS)
        self.runtime = Runtime(clock=self, random=RandomSource(seed), disk=self.disk)
        self._elapsed_ms = 0
        self._wall_step_ms = 0

    def __repr__(self) -> str:
        return f"World({self.kind})"

    # -- wall clock ---------------------------------------------------------------------------

    def now_ms(self) -> int:
        return EPOCH_MS + self._elapsed_ms + self._wall_step_ms

    def monotonic_ms(self) -> int:
        return self._elapsed_ms

    def step_wall_ms(self, delta_ms: int) -> None:
        """Step the wall clock alone (NTP, a VM resume): monotonic and trio time stay."""
        self._wall_step_ms += delta_ms

    def advance(self, ms: int) -> None:
        assert ms >= 0
        self._elapsed_ms += ms
        if self.trio_follows:
            self._trio_ms += ms

    # -- trio.abc.Clock ------------------------------------------------------------------------

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._trio_ms / 1000

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return 0.0 if deadline <= self.current_time() else math.inf

    # -- shards and the raw store ----------------------------------------------------------------

    def open(self, config: ShardConfig | None = None):  # noqa: ANN201 - an async context manager
        return open_shard(self.runtime, self.path, config=config or self.config)

    @asynccontextmanager
    async def raw_store(self) -> AsyncIterator:
        """The shard's KV store opened directly (the shard must be closed)."""
        kv = await self.disk.open(self.path)
        try:
            yield kv
        finally:
            await kv.close()

    async def raw_items(self) -> list[tuple[bytes, bytes]]:
        async with self.raw_store() as kv:
            return await kv.scan(b"", None)


async def store_items(shard: JobShard) -> list[tuple[bytes, bytes]]:
    """Every row of an open shard's store. Acknowledged writes are durable, so after an operation
    returns this is exactly what the operation left behind."""
    return await shard._store.kv.scan(b"", None)


def keys_mentioning(
    items: Iterable[tuple[bytes, bytes]], job_id: str
) -> list[tuple[Prefix, tuple]]:
    """The parsed keys whose tuple contains ``job_id`` (any table)."""
    out = []
    for k, _ in items:
        prefix, elements = keys.parse(k)
        if job_id in elements:
            out.append((prefix, elements))
    return out


def prefixes_of(items: Iterable[tuple[bytes, bytes]], job_id: str) -> set[Prefix]:
    return {p for p, _ in keys_mentioning(items, job_id)}


def new_job(
    job_id: str | None = None, *, group: str = GROUP, priority: int = 50, retry_count: int = 0,
    initial_ms: int = 1000, max_ms: int = 60_000, factor: float = 2.0, randomize: bool = False,
    start_at_ms: int = 0, payload: bytes = b"payload", metadata: dict[str, str] | None = None,
    tenant: str = DEFAULT_TENANT,
) -> NewJob:
    return NewJob(
        task_group=group, payload=payload, tenant=tenant, job_id=job_id, priority=priority,
        start_at_ms=start_at_ms,
        retry=RetryPolicy(retry_count, initial_ms, max_ms, factor, randomize),
        metadata=dict(metadata or {}),
    )


async def lease(
    shard: JobShard, n: int = 1000, *, worker: str = WORKER, group: str = GROUP
) -> list[LeasedTask]:
    return await shard.lease_tasks(worker, group, n)


async def lease_one(shard: JobShard, *, worker: str = WORKER, group: str = GROUP) -> LeasedTask:
    tasks = await shard.lease_tasks(worker, group, 1)
    assert len(tasks) == 1, tasks
    return tasks[0]


def report(task: LeasedTask, outcome: Outcome, *, worker: str = WORKER) -> OutcomeReport:
    """A report that identifies its attempt, so a repeat is recognised after the lease is gone."""
    return OutcomeReport(worker, task.task_id, outcome, task.tenant, task.job_id, task.attempt)


async def status_of(shard: JobShard, job_id: str, tenant: str = DEFAULT_TENANT) -> JobStatus:
    return (await shard.get_job(tenant, job_id)).state.status


def durable_stats(shard: JobShard) -> dict:
    """The parts of :meth:`JobShard.statistics` derived from stored data (the rest are
    per-process activity counters that start at zero when a shard opens)."""
    s = shard.statistics()
    return {
        "jobs_total": s.jobs_total,
        "jobs_by_status": s.jobs_by_status,
        "leases_held": s.leases_held,
        "due_tasks_per_task_group": s.due_tasks_per_task_group,
        "scheduled_future_tasks": s.scheduled_future_tasks,
    }


async def check_counters(shard: JobShard) -> None:
    recount = await shard.recount()  # under the shard lock, then at once:
    assert shard.counters() == recount


# -- limits ---------------------------------------------------------------------------------------


def limited_job(job_id: str | None, *limits: Limit, **kw: object) -> NewJob:
    """:func:`new_job` with ``limits`` (acquired in the order given)."""
    return replace(new_job(job_id, **kw), limits=tuple(limits))  # type: ignore[arg-type]


async def holder_rows(shard: JobShard) -> dict[tuple[str, str], list[str]]:
    """The durable holder rows: ``(tenant, queue) -> sorted job ids holding a slot``."""
    out: dict[tuple[str, str], list[str]] = {}
    for k, v in await store_items(shard):
        prefix, parts = keys.parse(k)
        if prefix == Prefix.CONCURRENCY_HOLDER:
            _granted_at, job_id, _attempt = msgpack.unpackb(v)
            out.setdefault((str(parts[0]), str(parts[1])), []).append(job_id)
    return {q: sorted(ids) for q, ids in out.items()}


async def request_rows(shard: JobShard) -> dict[tuple[str, str], list[str]]:
    """The durable concurrency requests: ``(tenant, queue) -> job ids in grant order``."""
    out: dict[tuple[str, str], list[str]] = {}
    for k, _ in await store_items(shard):
        prefix, parts = keys.parse(k)
        if prefix == Prefix.CONCURRENCY_REQUEST:
            out.setdefault((str(parts[0]), str(parts[1])), []).append(str(parts[4]))
    return out


async def where_is(shard: JobShard, job_id: str, tenant: str = DEFAULT_TENANT) -> str:
    """Where a job is: TIMER / READY / PARKED (its queued task), else its status name."""
    state = (await shard.get_job(tenant, job_id)).state
    if state.task is None:
        return state.status.name
    return {TIMER: "TIMER", READY: "READY", PARKED: "PARKED"}[state.task[2]]

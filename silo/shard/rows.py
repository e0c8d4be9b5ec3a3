"""Reading and writing a job's rows inside one transaction (DESIGN §3 "Tables").

Contract: every read goes through the :class:`~silo.shard.txn.Txn`, so an operation sees its own
earlier writes. :meth:`JobRows.put_state` is the only way a job's status row is written: it keeps
the status index, the status counters and the ``status_changed`` / ``task_moved`` events in step
with the row.
"""

from __future__ import annotations

import random

from silo.errors import NotFound, quote
from silo.keys import Prefix, key
from silo.model import JobInfo, JobState, JobStatus, Task, decode_int
from silo.shard import validation
from silo.shard.tables import JOBS_TERMINAL, status_counter, status_index_key
from silo.shard.txn import Txn
from silo.shard.validation import ShardLimits


class JobRows:
    """Row access for one shard: job info, status, cancel flag, new ids."""

    def __init__(self, shard_id: int, limits: ShardLimits, rng: random.Random) -> None:
        self.shard_id = shard_id
        self._limits = limits
        self._rng = rng

    def new_id(self, prefix: str) -> str:
        """A fresh random id (96 bits from the shard's seeded stream) starting with ``prefix``."""
        return f"{prefix}{self._rng.getrandbits(96):024x}"

    async def info(self, txn: Txn, tenant: str, job_id: str) -> JobInfo | None:
        k = key(Prefix.JOB, tenant, job_id)
        raw = await txn.get(k)
        return None if raw is None else JobInfo.decode(k, raw)

    async def queued_job(
        self, txn: Txn, task: Task, where: int
    ) -> tuple[JobInfo, JobState] | None:
        """The job behind the queued ``task`` found in table ``where`` (READY, TIMER or
        PARKED), or None for a stray entry: its job is gone, or no longer queued there under
        that task id (cannot happen while the tables agree; the caller drops the entry)."""
        info = await self.info(txn, task.tenant, task.job_id)
        state = await self.state(txn, task.tenant, task.job_id)
        if (
            info is None
            or state is None
            or state.status != JobStatus.SCHEDULED
            or state.task is None
            or state.task[2] != where
            or state.task[3] != task.task_id
        ):
            return None
        return info, state

    async def state(self, txn: Txn, tenant: str, job_id: str) -> JobState | None:
        k = key(Prefix.STATUS, tenant, job_id)
        raw = await txn.get(k)
        return None if raw is None else JobState.decode(k, raw)

    async def job(self, txn: Txn, tenant: str, job_id: str) -> tuple[JobInfo, JobState]:
        """The job's info and status; INVALID_ARGUMENT for a bad id, NOT_FOUND when absent."""
        validation.check_tenant(self._limits, tenant)
        validation.check_job_id(self._limits, job_id)
        info = await self.info(txn, tenant, job_id)
        state = await self.state(txn, tenant, job_id)
        if info is None or state is None:
            raise NotFound(f"job not found: {quote(job_id)} (tenant {quote(tenant)})")
        return info, state

    async def cancelled_at(self, txn: Txn, tenant: str, job_id: str) -> int | None:
        """When the job's cancellation was requested (None: it was not)."""
        k = key(Prefix.CANCEL, tenant, job_id)
        raw = await txn.get(k)
        return None if raw is None else decode_int(k, raw)

    def put_state(
        self, txn: Txn, info: JobInfo, old: JobState | None, new: JobState,
        *, cause: str | None = None,
    ) -> None:
        """Write ``new`` and keep the status index, counters and events in step (``cause``
        says why a queued task moved, e.g. ``"rate_token_given_back"``)."""
        t, j = info.tenant, info.job_id
        if old is None or old.status != new.status or old.changed_at_ms != new.changed_at_ms:
            if old is not None:
                txn.delete(status_index_key(t, old, j))
            txn.put(status_index_key(t, new, j), b"")
        if old is None or old.status != new.status:
            if old is not None:
                txn.bump(status_counter(t, old.status), -1)
                if old.status.terminal:
                    txn.bump(JOBS_TERMINAL, -1)
            txn.bump(status_counter(t, new.status), 1)
            if new.status.terminal:
                txn.bump(JOBS_TERMINAL, 1)
            txn.emit(
                "status_changed",
                shard=self.shard_id,
                tenant=t,
                job_id=j,
                old=None if old is None else old.status.name,
                new=new.status.name,
                attempt=new.attempt,
                at_ms=new.changed_at_ms,
                task_group=info.task_group,
                priority=info.priority,
                due_ms=None if new.task is None else new.task[1],
                where=None if new.task is None else new.task[2],
                limits_left=len(info.limits) - new.held,
                mono_ms=txn.mono,
                run_attempts=new.run_attempts,
            )
        elif new.task is not None and (old.task != new.task or old.held != new.held):
            # The queued task moved (timer -> parked -> ready, or re-queued by an expedite)
            # without a status change: the simulator's queue model follows it.
            txn.emit(
                "task_moved", shard=self.shard_id, tenant=t, job_id=j, attempt=new.task[0],
                due_ms=new.task[1], where=new.task[2], limits_left=len(info.limits) - new.held,
                at_ms=txn.now, mono_ms=txn.mono, cause=cause,
            )
        txn.put(key(Prefix.STATUS, t, j), new.encode())

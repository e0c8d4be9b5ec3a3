"""Key builders for the shard's tables (DESIGN §3 key layout) and its counters.

Tables added since DESIGN §3 (same conventions: prefix byte, then the encoded tuple):

=====================  ==========================  ============================================
prefix                 key                         value
=====================  ==========================  ============================================
``0x0F`` attempt high  ``(tenant, job_id)``        an :class:`~silo.model.AttemptHighWater`:
water                                              the highest attempt number a deleted job of
                                                   that id used, its request fingerprint and the
                                                   request id of the call that created it.
                                                   Written by delete, read and removed by the
                                                   enqueue that reuses the id, whose first
                                                   attempt is numbered above it: attempt numbers
                                                   strictly increase per (tenant, job id) for
                                                   the life of the shard (handlers fence on
                                                   them). A later try of the creating call (same
                                                   non-empty request id, same fingerprint)
                                                   leaves it (answered existed, deleted).
                                                   Version 1 rows (a bare integer) have neither,
                                                   version 2 rows no request id. At most one row
                                                   per deleted id; not counted.
``0x10`` job           ``(tenant, job_id)``        a :class:`~silo.model.JobFingerprint`: the
fingerprint                                        16-byte request fingerprint the job was
                                                   enqueued with (:mod:`silo.shard.fingerprint`)
                                                   and the request id of the call that created
                                                   it (version 1 rows, the bare fingerprint,
                                                   have none). Written with the job, deleted
                                                   with it (its contents go to the ``0x0F``
                                                   row); read when an enqueue names an id that
                                                   exists, to tell a re-sent identical job (OK,
                                                   existed) from a different one
                                                   (ALREADY_EXISTS). A job stored before
                                                   fingerprints has none: any enqueue of its id
                                                   is ALREADY_EXISTS.
``0x11`` rate          ``(tenant, name, key,       ``[1, limit, per_ms]`` of the job that
reservation            slot_ms, job_id,            reserved it: one row per rate token granted,
                       attempt)``                  at its time, in time order per bucket
                                                   (:mod:`silo.shard.reservations`). Written in
                                                   the batch that queues the attempt; moved by a
                                                   cancel that gives a token back; deleted
                                                   ``per_ms`` after its slot. Replaces the
                                                   ``0x0E`` token-bucket rows (no longer
                                                   written). Not counted.
``0xE0`` quarantine    ``(original key as hex)``   the original row's value, byte for byte. A
                                                   row a background loop could not process (a
                                                   record that does not decode, a poison item)
                                                   is moved here, out of the live tables, so it
                                                   is neither lost nor retried forever. Read
                                                   by operators only; not counted.
=====================  ==========================  ============================================

Counter rows (``META "counter" ...``) hold non-zero values only: a counter that reaches zero is
deleted.

``META "rate_floor"`` (:data:`RATE_FLOOR_KEY`): the latest ``slot_ms + per_ms`` of the rate
reservations the shard has deleted, an integer; every later reservation goes no earlier (see
:mod:`silo.shard.reservations`). Written with the deletions; never deleted (one row per shard;
a split's children keep their parent's).

``META "split"`` (only in a shard created by a split) is the child's split marker: its parent,
its hash range and how far its cleanup of other tenants' rows has come
(:class:`silo.shard.cleanup.SplitMarker`; which rows belong to whom is
:func:`silo.cluster.split.key_owner`).
"""

from __future__ import annotations

from functools import lru_cache

from silo.keys import Prefix, inverted, key, prefix_range
from silo.model import JobState, JobStatus, Task


@lru_cache(maxsize=4096)
def counter_key(*parts: str | int) -> bytes:
    return key(Prefix.META, "counter", *parts)


JOBS_TOTAL = counter_key("jobs")
JOBS_TERMINAL = counter_key("terminal")


@lru_cache(maxsize=4096)
def status_counter(tenant: str, status: JobStatus) -> bytes:
    return counter_key("status", tenant, int(status))


def status_index_key(tenant: str, state: JobState, job_id: str) -> bytes:
    return key(
        Prefix.STATUS_INDEX, tenant, int(state.status), inverted(state.changed_at_ms), job_id
    )


def ready_key(task: Task) -> bytes:
    return key(
        Prefix.READY, task.task_group, task.priority, task.due_ms, task.tenant, task.job_id,
        task.attempt,
    )


def timer_key(task: Task) -> bytes:
    return key(Prefix.TIMER, task.due_ms, task.tenant, task.job_id, task.attempt)


def request_key(tenant: str, queue: str, task: Task) -> bytes:
    """A parked request for a slot of ``queue``: ordered by priority, then due time."""
    return key(
        Prefix.CONCURRENCY_REQUEST, tenant, queue, task.priority, task.due_ms, task.job_id,
        task.attempt,
    )


def holder_key(tenant: str, queue: str, task_id: str) -> bytes:
    return key(Prefix.CONCURRENCY_HOLDER, tenant, queue, task_id)


def queue_key(tenant: str, queue: str) -> bytes:
    return key(Prefix.FLOATING_LIMIT, tenant, queue)


def bucket_key(tenant: str, name: str, bucket: str) -> bytes:
    """A token-bucket row of earlier versions (no longer written; deleted once refilled)."""
    return key(Prefix.RATE_BUCKET, tenant, name, bucket)


def reservation_key(
    tenant: str, name: str, bucket: str, slot_ms: int, job_id: str, attempt: int
) -> bytes:
    """A rate-limit token granted at ``slot_ms`` to the attempt: ordered by time in its
    bucket, so a bucket's latest reservations are the end of its key range."""
    return key(Prefix.RATE_RESERVATION, tenant, name, bucket, slot_ms, job_id, attempt)


def reservation_range(tenant: str, name: str, bucket: str) -> tuple[bytes, bytes | None]:
    """The key range of one bucket's reservations."""
    return prefix_range(Prefix.RATE_RESERVATION, tenant, name, bucket)


RATE_FLOOR_KEY = key(Prefix.META, "rate_floor")
"""The shard's rate floor: see the module docstring and :mod:`silo.shard.reservations`."""


def attempt_high_water_key(tenant: str, job_id: str) -> bytes:
    return key(Prefix.ATTEMPT_HIGH_WATER, tenant, job_id)


def quarantine_key(original: bytes) -> bytes:
    return key(Prefix.QUARANTINE, original.hex())


def fingerprint_key(tenant: str, job_id: str) -> bytes:
    return key(Prefix.JOB_FINGERPRINT, tenant, job_id)


def job_keys(tenant: str, job_id: str) -> tuple[bytes, bytes, bytes]:
    """The job, status and cancel-flag keys of a job."""
    return (
        key(Prefix.JOB, tenant, job_id),
        key(Prefix.STATUS, tenant, job_id),
        key(Prefix.CANCEL, tenant, job_id),
    )



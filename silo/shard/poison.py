"""Poison items (DESIGN §4 "No poison"): what the shard knows about a row it could not process.

A background loop (reaper, timers, grants, floating refresh) or a report batch that hits an
unexpected error on one item must not die or fail the other items. The shard undoes that item's
writes (a :class:`~silo.shard.txn.Savepoint`), logs the error, counts it, and then ends the
item's job FAILED with code ``INTERNAL_ERROR``; when the job itself cannot be read, the rows in
the way are moved to the quarantine table (:func:`~silo.shard.tables.quarantine_key`).

This module holds the pure parts: which job a stored row belongs to, and the log line.
"""

from __future__ import annotations

import logging

from silo import keys
from silo.keys import Prefix

log = logging.getLogger("silo.shard.poison")

# Where (tenant, job id) sit in the key tuple of each per-job table.
_JOB_POSITIONS: dict[Prefix, tuple[int, int]] = {
    Prefix.JOB: (0, 1),
    Prefix.STATUS: (0, 1),
    Prefix.CANCEL: (0, 1),
    Prefix.ATTEMPT: (0, 1),
    Prefix.METADATA_INDEX: (0, 3),
    Prefix.TIMER: (1, 2),
    Prefix.READY: (3, 4),
    Prefix.CONCURRENCY_REQUEST: (0, 4),
}


def job_of_row(k: bytes) -> tuple[str, str] | None:
    """``(tenant, job_id)`` of a per-job row, from its key alone (None: the key names no job
    or does not parse). Refresh tasks of floating limits name their queue, not a job; the
    caller finds no job for them."""
    try:
        prefix, parts = keys.parse(k)
    except ValueError:
        return None
    where = _JOB_POSITIONS.get(prefix)
    if where is None or len(parts) <= max(where):
        return None
    tenant, job_id = parts[where[0]], parts[where[1]]
    if not isinstance(tenant, str) or not isinstance(job_id, str):
        return None
    return tenant, job_id


def log_poison(shard_id: int, what: str, exc: BaseException) -> None:
    """One error-level line per poison item, with the traceback."""
    log.error("shard %d: poison item (%s): %s", shard_id, what, exc, exc_info=exc)

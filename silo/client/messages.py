"""Requests the client builds and answers it decodes, shared by every client. Pure functions:
validation, protobuf construction and decoding, no I/O.

Ids: job ids and enqueue request ids are 128 random bits in hex (32 characters, under the
server's ``request_id_max_chars``), drawn from the client's seeded ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from silo.client.types import Job, JobCancelled, JobFailed, pack, unpack
from silo.errors import Code, InvalidArgument, SiloError, error_for_code, quote
from silo.model import DEFAULT_PRIORITY, DEFAULT_TENANT, JobStatus, Limit, NewJob, RetryPolicy
from silo.wire import (
    attempt_from_pb,
    encode_varint,
    limit_from_pb,
    new_job_to_pb,
    pb,
    retry_from_pb,
)

ENQUEUE_BATCH_MAX_JOBS = 1000
"""Jobs per EnqueueBatch call (the server's default ``max_jobs_per_batch``)."""

ENQUEUE_BATCH_MAX_BYTES = 8 * 1024 * 1024
"""Encoded job bytes per EnqueueBatch call, well under the 16 MiB message cap. A single job
larger than this goes in a call of its own."""

RESULT_POLL_INITIAL_S = 0.05
RESULT_POLL_MAX_S = 1.0


def random_hex_id(rng: random.Random) -> str:
    """128 random bits as 32 hex characters."""
    return f"{rng.getrandbits(128):032x}"


# -- enqueue ---------------------------------------------------------------------------------


def new_job(
    task_group: str,
    payload: Any,
    *,
    tenant: str | None,
    job_id: str,
    priority: int = DEFAULT_PRIORITY,
    start_at_ms: int | None = None,
    retry: RetryPolicy | None = None,
    metadata: dict[str, str] | None = None,
    limits: Sequence[Limit] = (),
    timeout_ms: int | None = None,
) -> NewJob:
    """The job one ``enqueue(...)`` call describes, its payload packed as msgpack. Raises
    InvalidArgument for a ``timeout_ms`` that is not a positive integer (the server checks the
    rest and bounds ``timeout_ms`` by its ``max_timeout_ms``)."""
    if timeout_ms is not None and (
        isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 1
    ):
        raise InvalidArgument(f"timeout_ms must be a positive integer, got {timeout_ms!r}")
    return NewJob(
        task_group=task_group,
        payload=pack(payload),
        tenant=tenant or DEFAULT_TENANT,
        job_id=job_id,
        priority=priority,
        start_at_ms=start_at_ms or 0,
        retry=retry or RetryPolicy(),
        metadata=dict(metadata or {}),
        limits=tuple(limits),
        timeout_ms=timeout_ms or 0,
    )


def with_ids(jobs: Sequence[NewJob], new_id: Callable[[], str]) -> list[NewJob]:
    """``jobs`` in order, each without an id given one from ``new_id()``."""
    return [j if j.job_id else replace(j, job_id=new_id()) for j in jobs]


def enqueue_request(shard_id: int, job: NewJob, request_id: str) -> pb.EnqueueRequest:
    return pb.EnqueueRequest(shard=shard_id, job=new_job_to_pb(job), request_id=request_id)


class EncodedBatchRequest:
    """An EnqueueBatchRequest whose encoding was built from its jobs' encodings, each made once
    (they are needed anyway to size the chunks). ``bytes(request)`` is exactly what
    ``bytes(pb.EnqueueBatchRequest(shard=..., jobs=..., request_id=...))`` would give."""

    __slots__ = ("shard", "jobs", "request_id", "_data")

    def __init__(
        self, shard: int, jobs: list[pb.JobSpec], encoded: list[bytes], request_id: str
    ) -> None:
        self.shard = shard
        self.jobs = jobs
        self.request_id = request_id
        # Fields in number order, as the generated encoder writes them: shard (1), the jobs
        # (2, each tag 0x12 + length + body), request_id (4).
        parts = [bytes(pb.EnqueueBatchRequest(shard=shard))]
        for body in encoded:
            parts.append(_JOBS_TAG + encode_varint(len(body)))
            parts.append(body)
        parts.append(bytes(pb.EnqueueBatchRequest(request_id=request_id)))
        self._data = b"".join(parts)

    def __bytes__(self) -> bytes:
        return self._data


_JOBS_TAG = b"\x12"
"""Field 2 (``jobs``) of EnqueueBatchRequest, length-delimited."""




def enqueue_batch_requests(
    shard_id: int, jobs: Sequence[NewJob], request_id: str, max_jobs: int, max_bytes: int,
) -> list[EncodedBatchRequest]:
    """The EnqueueBatch calls that carry ``jobs`` of one shard (see :func:`batch_chunks`);
    every job is encoded once."""
    specs = [new_job_to_pb(j) for j in jobs]
    encoded = [bytes(spec) for spec in specs]
    requests: list[EncodedBatchRequest] = []
    start = 0
    for end in _chunk_ends([len(e) for e in encoded], max_jobs, max_bytes):
        requests.append(
            EncodedBatchRequest(shard_id, specs[start:end], encoded[start:end], request_id)
        )
        start = end
    return requests


def batch_chunks(
    specs: Sequence[pb.JobSpec], max_jobs: int, max_bytes: int
) -> list[list[pb.JobSpec]]:
    """``specs`` in order, cut into runs of at most ``max_jobs`` jobs and ``max_bytes`` encoded
    bytes (a job larger than ``max_bytes`` alone makes a run)."""
    chunks: list[list[pb.JobSpec]] = []
    start = 0
    for end in _chunk_ends([len(bytes(spec)) for spec in specs], max_jobs, max_bytes):
        chunks.append(list(specs[start:end]))
        start = end
    return chunks


def _chunk_ends(sizes: Sequence[int], max_jobs: int, max_bytes: int) -> list[int]:
    """Where each run of :func:`batch_chunks` ends, given the jobs' encoded sizes."""
    ends: list[int] = []
    count = size = 0
    for i, encoded_size in enumerate(sizes):
        n = encoded_size + 8  # the field tag and length prefix of a repeated message
        if count and (count >= max_jobs or size + n > max_bytes):
            ends.append(i)
            count, size = 0, 0
        count += 1
        size += n
    if count:
        ends.append(len(sizes))
    return ends


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


# -- reading jobs ----------------------------------------------------------------------------


def job_ref(shard_id: int, tenant: str, job_id: str) -> pb.JobRef:
    return pb.JobRef(shard=shard_id, tenant=tenant, id=job_id)


def check_job_id(job_id: str) -> None:
    if not job_id:
        raise InvalidArgument("job id is required")


def get_job_request(ref: pb.JobRef, attempts: bool | int, attempts_before: int) -> pb.GetJobRequest:
    """GetJob for ``get(attempts=..., attempts_before=...)``: True asks for the server's default
    page, N for the newest N (the server bounds N by its ``get_job_attempts_max``)."""
    if isinstance(attempts, bool):
        include, max_attempts = attempts, 0
    else:
        if attempts < 1:
            raise InvalidArgument(f"attempts must be True, False or at least 1, not {attempts}")
        include, max_attempts = True, attempts
    return pb.GetJobRequest(job=ref, include_attempts=include, max_attempts=max_attempts,
                            attempts_before=attempts_before)


def job_from_response(resp: pb.GetJobResponse, with_attempts: bool) -> Job:
    """The :class:`Job` a GetJob answer describes (``attempts`` only ``with_attempts``)."""
    j = resp.job
    if j is None:
        raise SiloError("GetJob answered without a job")
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
        attempts=tuple(attempt_from_pb(a) for a in j.attempts) if with_attempts else None,
        limits=tuple(limit_from_pb(x) for x in j.limits),
        waiting_for=j.waiting_for,
        attempts_total=j.attempts_total,
        undelivered_count=j.undelivered_count,
        timeout_ms=j.timeout_ms or None,
    )


def result_pending(err: SiloError) -> bool:
    """Whether GetJobResult's error only says the job has not finished yet."""
    return err.code == Code.FAILED_PRECONDITION


def next_poll_delay_s(delay_s: float) -> float:
    return min(delay_s * 2, RESULT_POLL_MAX_S)


def result_from_response(job_id: str, r: pb.GetJobResultResponse) -> Any:
    """A finished job's decoded result; raises :class:`JobFailed` (code, decoded data) or
    :class:`JobCancelled`."""
    status = JobStatus(int(r.status))
    if status == JobStatus.SUCCEEDED:
        return unpack(r.result)
    if status == JobStatus.FAILED:
        raise JobFailed(job_id, r.error_code, _safe_unpack(r.error_data))
    raise JobCancelled(job_id, r.cancelled_at_ms)


def _safe_unpack(data: bytes) -> Any:
    try:
        return unpack(data)
    except Exception:
        return data


# -- job actions -----------------------------------------------------------------------------


def _became(*statuses: JobStatus) -> Callable[[SiloError], bool]:
    names = tuple(s.name for s in statuses)

    def ok(err: SiloError) -> bool:
        return err.code == Code.FAILED_PRECONDITION and err.message.endswith(names)

    return ok


def _was_deleted(err: SiloError) -> bool:
    return err.code == Code.NOT_FOUND


ACTIONS: dict[str, tuple[str, Callable[[SiloError], bool]]] = {
    "cancel": ("CancelJob", _became(JobStatus.CANCELLED)),
    "restart": ("RestartJob", _became(JobStatus.SCHEDULED, JobStatus.RUNNING,
                                      JobStatus.SUCCEEDED)),
    "expedite": ("ExpediteJob", _became(JobStatus.RUNNING, JobStatus.SUCCEEDED)),
    "delete": ("DeleteJob", _was_deleted),
}
"""Each job action: its RPC, and which error seen on a retry (after an ambiguous failure) shows
that an earlier try already did it (a cancel whose job is now CANCELLED...)."""

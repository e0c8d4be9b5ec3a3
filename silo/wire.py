"""Conversions between protobuf messages and silo's model (used by the service and the client).

This is the only module besides the generated code that knows both sides; nothing below the
service layer sees protobuf.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgpack

from silo.errors import InvalidArgument
from silo.model import (
    DEFAULT_PRIORITY,
    DEFAULT_TENANT,
    Attempt,
    AttemptState,
    Cancelled,
    ConcurrencyLimit,
    Failure,
    FloatingConcurrencyLimit,
    JobStatus,
    JobView,
    LeasedTask,
    Limit,
    NewJob,
    Outcome,
    OutcomeReport,
    RateLimit,
    Released,
    RetryPolicy,
    Success,
)
from silo.pb.silo import v1 as pb

__all__ = ["pb"]


def check_msgpack(data: bytes, what: str) -> None:
    """INVALID_ARGUMENT unless ``data`` is empty or exactly one well-formed msgpack value."""
    if not data:
        return
    try:
        msgpack.unpackb(data, raw=True, strict_map_key=False)
    except Exception as exc:
        raise InvalidArgument(f"{what} is not valid msgpack: {exc}") from exc


_VARINT_TYPES = frozenset(
    {"enum", "bool", "int32", "int64", "uint32", "uint64", "sint32", "sint64"}
)
_FIXED64_TYPES = frozenset({"double", "fixed64", "sfixed64"})
_FIXED32_TYPES = frozenset({"float", "fixed32", "sfixed32"})
_MAX_NESTING = 32

# field number -> (allowed wire types, nested schema or None)
_Schema = dict[int, tuple[frozenset[int], Any]]


def check_wire_format(data: bytes, message_type: type[Any]) -> None:
    """Raise ``ValueError`` unless ``data`` is well-formed protobuf for ``message_type``.

    betterproto2's parser is lenient: it stops quietly at a truncated tag, accepts a length that
    runs past the end, and stores ``None`` for a field sent with an impossible wire type. This
    checks every tag, varint and length (recursing into nested messages and map entries) and
    that each known field uses its declared wire type; unknown fields only need to be
    well-formed.
    """
    _check_message(data, _schema(message_type), 0)


def _wire_types(meta: Any) -> frozenset[int]:
    t = meta.proto_type
    if t in _VARINT_TYPES:
        base = 0
    elif t in _FIXED64_TYPES:
        base = 1
    elif t in _FIXED32_TYPES:
        base = 5
    else:
        return frozenset({2})
    return frozenset({base, 2}) if meta.repeated else frozenset({base})


@cache
def _schema(message_type: type[Any]) -> _Schema:
    meta = message_type._betterproto  # type: ignore[attr-defined]
    out: _Schema = {}
    for name, field_meta in meta.meta_by_field_name.items():
        nested: Any = None
        if field_meta.proto_type == "message":
            nested = meta.cls_by_field[name]
        elif field_meta.proto_type == "map":
            key_meta, value_meta = field_meta.map_meta
            value_nested = (
                meta.cls_by_field[f"{name}.value"] if value_meta.proto_type == "message" else None
            )
            nested = {1: (_wire_types(key_meta), None), 2: (_wire_types(value_meta), value_nested)}
        out[field_meta.number] = (_wire_types(field_meta), nested)
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = min(len(data), pos + 10)
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("truncated or overlong varint")


def _check_message(data: bytes, schema: _Schema, depth: int) -> None:
    if depth > _MAX_NESTING:
        raise ValueError("messages nested too deeply")
    pos, size = 0, len(data)
    while pos < size:
        tag = data[pos]  # one-byte varints (the common case) inline, longer ones via _varint
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        expected = schema.get(number)
        if expected is not None and wire_type not in expected[0]:
            raise ValueError(f"field {number} has wire type {wire_type}, expected "
                             f"{'/'.join(str(w) for w in sorted(expected[0]))}")
        if wire_type == 2:
            if pos < size and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _varint(data, pos)
            start, pos = pos, pos + length
            if pos > size:
                raise ValueError(f"field {number} is truncated")
            if expected is not None and expected[1] is not None:
                nested = expected[1]
                _check_message(
                    data[start:pos], nested if isinstance(nested, dict) else _schema(nested),
                    depth + 1,
                )
        elif wire_type == 0:
            if pos < size and data[pos] < 0x80:
                pos += 1
            else:
                _, pos = _varint(data, pos)
        elif wire_type == 1 or wire_type == 5:
            pos += 8 if wire_type == 1 else 4
            if pos > size:
                raise ValueError(f"field {number} is truncated")
        else:
            raise ValueError(f"field {number} has invalid wire type {wire_type}")


def tenant_or_default(tenant: str) -> str:
    return tenant or DEFAULT_TENANT


def retry_from_pb(retry: pb.RetryPolicy | None) -> RetryPolicy:
    if retry is None:
        return RetryPolicy()
    return RetryPolicy(
        retry_count=retry.retry_count,
        initial_backoff_ms=retry.initial_backoff_ms,
        max_backoff_ms=retry.max_backoff_ms,
        backoff_factor=retry.backoff_factor or 2.0,
        randomize=retry.randomize,
    )


def retry_to_pb(retry: RetryPolicy) -> pb.RetryPolicy:
    return pb.RetryPolicy(
        retry_count=retry.retry_count,
        initial_backoff_ms=retry.initial_backoff_ms,
        max_backoff_ms=retry.max_backoff_ms,
        backoff_factor=retry.backoff_factor,
        randomize=retry.randomize,
    )


def new_job_from_pb(spec: pb.JobSpec | None) -> NewJob:
    if spec is None:
        raise InvalidArgument("job is required")
    check_msgpack(spec.payload, "payload")
    return NewJob(
        task_group=spec.task_group,
        payload=spec.payload,
        tenant=tenant_or_default(spec.tenant),
        job_id=spec.id or None,
        priority=spec.priority if spec.has_priority else DEFAULT_PRIORITY,
        start_at_ms=spec.start_at_ms,
        retry=retry_from_pb(spec.retry) if spec.has_retry else RetryPolicy(),
        metadata=dict(spec.metadata),
        limits=tuple(limit_from_pb(x) for x in spec.limits),
        timeout_ms=spec.timeout_ms,
    )


def limit_from_pb(limit: pb.Limit) -> Limit:
    import betterproto2

    which, value = betterproto2.which_one_of(limit, "kind")
    if which == "concurrency":
        return ConcurrencyLimit(value.key, value.max_concurrency)
    if which == "floating":
        return FloatingConcurrencyLimit(
            value.key, value.default_max_concurrency, value.refresh_interval_ms,
            dict(value.metadata),
        )
    if which == "rate":
        return RateLimit(value.name, value.key, value.limit, value.per_ms)
    raise InvalidArgument("a limit must set one of concurrency, floating or rate")


def limit_to_pb(limit: Limit) -> pb.Limit:
    if isinstance(limit, ConcurrencyLimit):
        return pb.Limit(
            concurrency=pb.ConcurrencyLimit(key=limit.key, max_concurrency=limit.max_concurrency)
        )
    if isinstance(limit, FloatingConcurrencyLimit):
        return pb.Limit(
            floating=pb.FloatingConcurrencyLimit(
                key=limit.key,
                default_max_concurrency=limit.default_max_concurrency,
                refresh_interval_ms=limit.refresh_interval_ms,
                metadata=dict(limit.metadata),
            )
        )
    return pb.Limit(
        rate=pb.RateLimit(name=limit.name, key=limit.key, limit=limit.limit, per_ms=limit.per_ms)
    )


def new_job_to_pb(job: NewJob) -> pb.JobSpec:
    return pb.JobSpec(
        tenant=job.tenant,
        id=job.job_id or "",
        task_group=job.task_group,
        payload=job.payload,
        priority=job.priority,
        has_priority=True,
        start_at_ms=job.start_at_ms,
        retry=retry_to_pb(job.retry),
        has_retry=True,
        metadata=dict(job.metadata),
        limits=[limit_to_pb(x) for x in job.limits],
        timeout_ms=job.timeout_ms,
    )


def attempt_to_pb(a: Attempt) -> pb.Attempt:
    return pb.Attempt(
        attempt=a.attempt,
        task_id=a.task_id,
        state=pb.AttemptState(int(a.state)),
        worker_id=a.worker_id,
        started_at_ms=a.started_at_ms,
        ended_at_ms=a.ended_at_ms or 0,
        result=a.result or b"",
        error_code=a.error_code or "",
        error_data=a.error_data or b"",
    )


def attempt_from_pb(a: pb.Attempt) -> Attempt:
    return Attempt(
        attempt=a.attempt,
        task_id=a.task_id,
        state=AttemptState(int(a.state)),
        worker_id=a.worker_id,
        started_at_ms=a.started_at_ms,
        ended_at_ms=a.ended_at_ms or None,
        result=a.result if a.state == pb.AttemptState.SUCCEEDED else None,
        error_code=a.error_code or None,
        error_data=a.error_data if a.error_code else None,
    )


def job_to_pb(view: JobView) -> pb.Job:
    info, state = view.info, view.state
    return pb.Job(
        tenant=info.tenant,
        id=info.job_id,
        task_group=info.task_group,
        payload=info.payload,
        priority=info.priority,
        retry=retry_to_pb(info.retry),
        metadata=dict(info.metadata),
        enqueued_at_ms=info.enqueued_at_ms,
        start_at_ms=info.start_at_ms,
        status=pb.JobStatus(int(state.status)),
        status_changed_at_ms=state.changed_at_ms,
        next_attempt_at_ms=state.next_attempt_at_ms or 0,
        attempt_count=state.attempt if state.status != JobStatus.SCHEDULED else state.attempt - 1,
        cancel_requested=view.cancelled_at_ms is not None,
        cancelled_at_ms=view.cancelled_at_ms or 0,
        attempts=[attempt_to_pb(a) for a in view.attempts or ()],
        limits=[limit_to_pb(x) for x in info.limits],
        waiting_for=view.waiting_for,
        attempts_total=view.attempts_total,
        undelivered_count=state.undelivered,
        timeout_ms=info.timeout_ms,
    )


def leased_task_to_pb(shard_id: int, t: LeasedTask) -> pb.Task:
    """One task of a LeaseTasks reply (its size is bounded by
    :func:`silo.reply_size.task_reply_bytes`)."""
    return pb.Task(
        shard=shard_id,
        task_id=t.task_id,
        tenant=t.tenant,
        job_id=t.job_id,
        attempt=t.attempt,
        task_group=t.task_group,
        payload=t.payload,
        priority=t.priority,
        metadata=dict(t.metadata),
        lease_expiry_ms=t.lease_expiry_ms,
        timeout_ms=t.timeout_ms,
        refresh=None
        if t.refresh is None
        else pb.RefreshInfo(
            queue=t.refresh.queue,
            current_max=t.refresh.current_max,
            metadata=dict(t.refresh.metadata),
        ),
    )


def outcome_from_pb(o: pb.Outcome) -> OutcomeReport:
    which, value = _oneof(o)
    outcome: Outcome
    if which == "success":
        check_msgpack(value, "result")
        outcome = Success(value)
    elif which == "failure":
        check_msgpack(value.data, "error data")
        outcome = Failure(value.code, value.data)
    elif which == "cancelled":
        outcome = Cancelled()
    elif which == "released":
        outcome = Released()
    else:
        raise InvalidArgument("outcome must be one of success, failure, cancelled or released")
    return OutcomeReport(
        worker_id=o.worker_id,
        task_id=o.task_id,
        outcome=outcome,
        tenant=o.tenant or None,
        job_id=o.job_id or None,
        attempt=o.attempt or None,
    )


def outcome_to_pb(shard: int, report: OutcomeReport) -> pb.Outcome:
    o = pb.Outcome(
        shard=shard,
        worker_id=report.worker_id,
        task_id=report.task_id,
        tenant=report.tenant or "",
        job_id=report.job_id or "",
        attempt=report.attempt or 0,
    )
    outcome = report.outcome
    if isinstance(outcome, Success):
        o.success = outcome.result
    elif isinstance(outcome, Failure):
        o.failure = pb.Failure(code=outcome.code, data=outcome.data)
    elif isinstance(outcome, Released):
        o.released = pb.Released()
    else:
        o.cancelled = pb.Cancelled()
    return o


def _oneof(o: pb.Outcome) -> tuple[str | None, object]:
    import betterproto2

    try:
        return betterproto2.which_one_of(o, "result")
    except Exception:  # pragma: no cover - defensive against a malformed message
        return None, None


def encode_varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_delimited(tag: bytes, body: bytes) -> bytes:
    return tag + encode_varint(len(body)) + body


def encode_enqueue_batch_response(
    ids: list[str], results: list[tuple[str, str, bool, bool]]
) -> bytes:
    """``bytes(pb.EnqueueBatchResponse(ids=ids, results=[pb.EnqueueResult(id=, message=,
    existed=, deleted=) ...]))`` for results whose ``code`` is OK, built directly (the
    generated encoder costs more than the rest of a large batch's reply).

    ``results`` holds ``(id, message, existed, deleted)``; the output is byte-identical to the
    generated encoder's (fields in number order, defaults left out)."""
    parts = [_length_delimited(b"\x0a", job_id.encode()) for job_id in ids]
    for job_id, message, existed, deleted in results:
        body = b""
        if job_id:
            body += _length_delimited(b"\x0a", job_id.encode())
        if message:
            body += _length_delimited(b"\x1a", message.encode())
        if existed:
            body += b"\x20\x01"
        if deleted:
            body += b"\x28\x01"
        parts.append(_length_delimited(b"\x12", body))
    return b"".join(parts)

"""Records and their msgpack codec (silo/model.py): round trips and corruption.

Corruption through a running shard (a garbage STATUS row) is covered in
``tests/shard/test_corruption.py``.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silo.model import (
    PARKED,
    READY,
    TIMER,
    Attempt,
    AttemptState,
    ConcurrencyLimit,
    CorruptRecord,
    FloatingConcurrencyLimit,
    JobInfo,
    JobState,
    JobStatus,
    Lease,
    RateLimit,
    RetryPolicy,
    Task,
    decode_int,
    encode_int,
)

SETTINGS = settings(max_examples=60, deadline=None)
KEY = b"\x02\x01tenant\x00\x01\x01job\x00\x01"

text = st.text(max_size=12)
ms = st.integers(0, 2**53)
small = st.integers(0, 10_000)
opt_bytes = st.none() | st.binary(max_size=16)

retry_policies = st.builds(
    RetryPolicy,
    retry_count=small,
    initial_backoff_ms=ms,
    max_backoff_ms=ms,
    backoff_factor=st.floats(1.0, 100.0),
    randomize=st.booleans(),
)
job_infos = st.builds(
    JobInfo,
    tenant=text,
    job_id=text,
    task_group=text,
    payload=st.binary(max_size=64),
    priority=st.integers(0, 99),
    retry=retry_policies,
    metadata=st.dictionaries(text, text, max_size=4),
    enqueued_at_ms=ms,
    start_at_ms=ms,
    limits=st.lists(
        st.builds(ConcurrencyLimit, text, st.integers(0, 10**6))
        | st.builds(FloatingConcurrencyLimit, text, st.integers(0, 10**6), ms,
                    st.dictionaries(text, text, max_size=2))
        | st.builds(RateLimit, text, text, st.integers(1, 10**6), st.integers(1, 10**9)),
        max_size=3,
    ).map(tuple),
    timeout_ms=st.integers(0, 24 * 3600 * 1000),
)
job_states = st.builds(
    JobState,
    status=st.sampled_from(JobStatus),
    changed_at_ms=ms,
    next_attempt_at_ms=st.none() | ms,
    attempt=small,
    run_attempts=small,
    task=st.none() | st.tuples(small, ms, st.sampled_from([TIMER, READY, PARKED]), text),
    lease_task_id=st.none() | text,
    held=small,
)
attempts = st.builds(
    Attempt,
    attempt=small,
    task_id=text,
    state=st.sampled_from(AttemptState),
    worker_id=text,
    started_at_ms=ms,
    ended_at_ms=st.none() | ms,
    result=opt_bytes,
    error_code=st.none() | text,
    error_data=opt_bytes,
)
tasks = st.builds(
    Task, task_id=text, tenant=text, job_id=text, attempt=small, task_group=text,
    priority=st.integers(0, 99), due_ms=ms,
)
leases = st.builds(
    Lease, task_id=text, tenant=text, job_id=text, attempt=small, task_group=text,
    worker_id=text, leased_at_ms=ms, expiry_ms=ms,
)

RECORDS = {
    JobInfo: job_infos,
    JobState: job_states,
    Attempt: attempts,
    Task: tasks,
    Lease: leases,
}
RECORD_TYPES = list(RECORDS)


@SETTINGS
@given(st.data())
@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_record_round_trips(cls: type, data: st.DataObject) -> None:
    record = data.draw(RECORDS[cls])
    decoded = cls.decode(KEY, record.encode())
    assert decoded == record
    assert type(decoded) is cls


@SETTINGS
@given(st.integers(-(2**63), 2**64 - 1))
def test_int_round_trips(value: int) -> None:
    assert decode_int(KEY, encode_int(value)) == value


def test_default_records_round_trip() -> None:
    info = JobInfo("t", "j", "g", b"")
    assert JobInfo.decode(KEY, info.encode()) == info
    state = JobState(JobStatus.SCHEDULED, 0)
    assert JobState.decode(KEY, state.encode()) == state


def test_records_written_before_delivery_acks_still_decode() -> None:
    """A version-1 lease (no ``acked`` field) counts as acknowledged; a version-1 job state has
    no undelivered attempts."""
    v1_lease = msgpack.packb([1, "task", "t", "j", 1, "g", "w", 1, 2], use_bin_type=True)
    assert Lease.decode(KEY, v1_lease) == Lease("task", "t", "j", 1, "g", "w", 1, 2, acked=True)
    v1_state = msgpack.packb([1, 2, 1, 2, 3, 1, [3, 4, READY, "t"], "task", 1],
                             use_bin_type=True)
    state = JobState.decode(KEY, v1_state)
    # No attempt_rows before version 3 either: the attempt number stands in (an upper bound).
    assert state == JobState(JobStatus.RUNNING, 1, 2, 3, 1, (3, 4, READY, "t"), "task", 1,
                             attempt_rows=3)
    assert state.undelivered == 0
    v2_state = msgpack.packb([2, 2, 1, 2, 3, 1, [3, 4, READY, "t"], "task", 1, 2],
                             use_bin_type=True)
    state = JobState.decode(KEY, v2_state)
    assert (state.undelivered, state.attempt_rows) == (2, 3)


def test_delivery_fields_round_trip() -> None:
    lease = Lease("task", "t", "j", 1, "g", "w", 1, 2, acked=False)
    assert Lease.decode(KEY, lease.encode()) == lease
    state = JobState(JobStatus.SCHEDULED, 1, undelivered=3, attempt_rows=7)
    assert JobState.decode(KEY, state.encode()) == state
    assert state.copy().undelivered == 3
def test_job_info_without_timeout_is_stored_as_before_and_with_one_round_trips() -> None:
    info = JobInfo("t", "j", "g", b"")
    assert len(msgpack.unpackb(info.encode())) == 11  # version + the 10 original fields
    timed = JobInfo("t", "j", "g", b"", timeout_ms=300)
    assert JobInfo.decode(KEY, timed.encode()).timeout_ms == 300
    _assert_corrupt(JobInfo, msgpack.packb([*msgpack.unpackb(info.encode()), -1]))


def test_state_copy_is_independent() -> None:
    state = JobState(JobStatus.RUNNING, 5, None, 3, 1, (3, 7, READY, "t3"), "t1", 2)
    copy = state.copy()
    assert copy == state
    copy.status = JobStatus.FAILED
    assert state.status is JobStatus.RUNNING


def _assert_corrupt(cls: type, data: bytes) -> CorruptRecord:
    with pytest.raises(CorruptRecord) as info:
        cls.decode(KEY, data)
    assert KEY.hex() in str(info.value)
    assert info.value.key == KEY
    return info.value


def _fields(cls: type) -> list:
    """A valid encoded record of ``cls``, unpacked into its list (version first)."""
    samples = {
        JobInfo: JobInfo("t", "j", "g", b"p", metadata={"k": "v"}),
        JobState: JobState(JobStatus.RUNNING, 1, 2, 3, 1, (3, 4, READY, "t"), "task", 1),
        Attempt: Attempt(1, "task", AttemptState.FAILED, "w", 1, 2, None, "E", b"d"),
        Task: Task("task", "t", "j", 1, "g", 50, 10),
        Lease: Lease("task", "t", "j", 1, "g", "w", 1, 2),
    }
    return msgpack.unpackb(samples[cls].encode(), raw=False)


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xc1", b"\xff\xfe\xfd", b"not msgpack at all \x00\x01", b"\x92\x01"],
    ids=["empty", "reserved-byte", "bytes", "text", "truncated-array"],
)
def test_garbage_bytes_are_corrupt(cls: type, garbage: bytes) -> None:
    _assert_corrupt(cls, garbage)


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_wrong_version_is_corrupt(cls: type) -> None:
    fields = _fields(cls)
    for version in (0, 99, "1", None, True):
        err = _assert_corrupt(cls, msgpack.packb([version, *fields[1:]], use_bin_type=True))
        assert f"version-{fields[0]} record" in str(err)


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_wrong_arity_is_corrupt(cls: type) -> None:
    fields = _fields(cls)
    _assert_corrupt(cls, msgpack.packb(fields[:-1], use_bin_type=True))
    _assert_corrupt(cls, msgpack.packb([*fields, "extra"], use_bin_type=True))
    _assert_corrupt(cls, msgpack.packb([1], use_bin_type=True))


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_non_array_is_corrupt(cls: type) -> None:
    _assert_corrupt(cls, msgpack.packb({"version": 1}))
    _assert_corrupt(cls, msgpack.packb(1))
    _assert_corrupt(cls, msgpack.packb("x"))


def test_bad_enum_values_are_corrupt() -> None:
    fields = _fields(JobState)
    fields[1] = 99  # no such status
    _assert_corrupt(JobState, msgpack.packb(fields, use_bin_type=True))
    fields = _fields(Attempt)
    fields[3] = 0  # no such attempt state
    _assert_corrupt(Attempt, msgpack.packb(fields, use_bin_type=True))


def test_corrupt_int() -> None:
    with pytest.raises(CorruptRecord, match=KEY.hex()):
        decode_int(KEY, b"\xc1")
    with pytest.raises(CorruptRecord, match=KEY.hex()):
        decode_int(KEY, msgpack.packb("12"))


# Any msgpack value, used to replace one field of an otherwise valid record.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=5) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                  max_size=3),
    max_leaves=6,
)


@SETTINGS
@given(st.data())
@pytest.mark.parametrize("cls", [JobInfo, JobState, Attempt], ids=lambda c: c.__name__)
def test_a_mistyped_field_never_escapes_as_another_error(cls: type, data: st.DataObject) -> None:
    """Whatever a field holds, decoding either succeeds or raises CorruptRecord (naming the key):
    a damaged record never surfaces as a stray TypeError/KeyError without its key."""
    fields = _fields(cls)
    i = data.draw(st.integers(1, len(fields) - 1))
    fields[i] = data.draw(msgpack_values)
    raw = msgpack.packb(fields, use_bin_type=True)
    try:
        cls.decode(KEY, raw)
    except CorruptRecord as exc:
        assert KEY.hex() in str(exc)


@SETTINGS
@given(st.binary(max_size=64))
@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_random_bytes_decode_or_raise_corrupt_record(cls: type, data: bytes) -> None:
    try:
        cls.decode(KEY, data)
    except CorruptRecord:
        pass


def test_terminal_statuses() -> None:
    assert [s for s in JobStatus if s.terminal] == [
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
    ]

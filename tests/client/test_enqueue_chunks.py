"""SiloClient.enqueue_jobs cuts a shard's jobs into EnqueueBatch calls by count and bytes."""

from __future__ import annotations

import pytest

from silo.client import pack
from silo.client.client import batch_chunks, raise_refused
from silo.errors import AlreadyExists, Code
from silo.model import NewJob
from silo.wire import new_job_to_pb, pb


def specs(n: int, payload_chars: int) -> list[pb.JobSpec]:
    return [new_job_to_pb(NewJob("g", pack("z" * payload_chars), job_id=f"c-{i}"))
            for i in range(n)]


def test_chunks_respect_bytes_and_count() -> None:
    many = specs(30, 200_000)
    chunks = batch_chunks(many, 1000, 1_000_000)
    assert [len(c) for c in chunks] == [4] * 7 + [2]
    assert all(sum(len(bytes(s)) + 8 for s in c) <= 1_000_000 for c in chunks)
    assert [len(c) for c in batch_chunks(many, 7, 10**9)] == [7, 7, 7, 7, 2]
    assert [s for c in chunks for s in c] == many  # order kept, nothing lost


def test_a_job_larger_than_the_byte_budget_goes_alone() -> None:
    chunks = batch_chunks(specs(3, 5000), 1000, 100)
    assert [len(c) for c in chunks] == [1, 1, 1]


def test_refusal_raises_the_cause_not_a_held_back_job() -> None:
    batch = specs(3, 1)
    resp = pb.EnqueueBatchResponse(results=[
        pb.EnqueueResult(id="c-0", code=Code.ABORTED, message="not written"),
        pb.EnqueueResult(id="c-1", code=Code.ALREADY_EXISTS, message="a different job"),
        pb.EnqueueResult(id="c-2", code=Code.ABORTED, message="not written"),
    ])
    with pytest.raises(AlreadyExists, match="c-1"):
        raise_refused(batch, resp)
    ok = pb.EnqueueBatchResponse(results=[pb.EnqueueResult(id=f"c-{i}") for i in range(3)])
    raise_refused(batch, ok)


def test_encoded_batch_requests_match_the_generated_encoding() -> None:
    from silo.client.messages import enqueue_batch_requests
    from silo.model import NewJob

    jobs = [NewJob("t", b"x" * (i * 40), job_id=f"job-{i}") for i in range(30)]
    jobs.append(NewJob("t", b""))
    for max_jobs, max_bytes in [(1000, 10**9), (7, 10**9), (1000, 300)]:
        requests = enqueue_batch_requests(3, jobs, "req-1", max_jobs, max_bytes)
        assert sum(len(r.jobs) for r in requests) == len(jobs)
        for r in requests:
            expected = pb.EnqueueBatchRequest(shard=3, jobs=r.jobs, request_id="req-1")
            assert bytes(r) == bytes(expected)
            assert pb.EnqueueBatchRequest.parse(bytes(r)) == expected
    assert bytes(enqueue_batch_requests(0, jobs[:1], "", 10, 10**9)[0]) == bytes(
        pb.EnqueueBatchRequest(jobs=[new_job_to_pb(jobs[0])]))

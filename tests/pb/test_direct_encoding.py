"""Replies encoded directly (without the generated encoder) are byte-identical to it."""

from __future__ import annotations

import pytest

from silo.wire import encode_enqueue_batch_response, pb


@pytest.mark.parametrize(
    "results",
    [
        [],
        [("a", "", False, False)],
        [("job-1", "", False, False), ("é" * 70, "deleted since", True, True),
         ("x" * 200, "", True, False), ("", "", False, True)],
    ],
)
def test_enqueue_batch_response_matches_generated(
    results: list[tuple[str, str, bool, bool]],
) -> None:
    ids = [r[0] for r in results] + [""]
    expected = pb.EnqueueBatchResponse(
        ids=ids,
        results=[pb.EnqueueResult(id=i, message=m, existed=e, deleted=d)
                 for i, m, e, d in results],
    )
    data = encode_enqueue_batch_response(ids, results)
    assert data == bytes(expected)
    assert pb.EnqueueBatchResponse.parse(data) == expected

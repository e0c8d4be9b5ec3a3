"""The LeaseTasks reply size bound: never below what the tasks really take on the wire."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from silo.model import LeasedTask, RefreshRequest
from silo.reply_size import VARINT_FIELD_BYTES, max_reply_bytes, task_reply_bytes
from silo.wire import leased_task_to_pb, pb

SETTINGS = settings(max_examples=100, deadline=None)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=40)
metadata = st.dictionaries(text, st.text(max_size=200), max_size=6)

refreshes = st.none() | st.builds(RefreshRequest, text, u32, metadata)
tasks = st.builds(
    LeasedTask,
    task_id=text,
    tenant=text,
    job_id=text,
    attempt=u32,
    task_group=text,
    payload=st.binary(max_size=3000) | st.binary(min_size=20_000, max_size=20_100),
    priority=u32,
    metadata=metadata,
    lease_expiry_ms=u64,
    refresh=refreshes,
)


@SETTINGS
@given(tasks, u32)
def test_estimate_is_at_least_the_encoded_task(task: LeasedTask, shard: int) -> None:
    alone = len(bytes(pb.LeaseTasksResponse(tasks=[leased_task_to_pb(shard, task)])))
    assert task_reply_bytes(task) >= alone


@SETTINGS
@given(st.lists(st.tuples(tasks, u32), max_size=8), u64)
def test_estimates_add_up_to_at_least_the_whole_reply(
    items: list[tuple[LeasedTask, int]], lease_ms: int
) -> None:
    reply = pb.LeaseTasksResponse(
        tasks=[leased_task_to_pb(shard, t) for t, shard in items], lease_ms=lease_ms
    )
    assert sum(task_reply_bytes(t) for t, _ in items) + VARINT_FIELD_BYTES >= len(bytes(reply))


def test_reply_budget_leaves_headroom() -> None:
    cap = 16 * 1024 * 1024
    assert max_reply_bytes(cap) == 15 * 1024 * 1024
    assert 0 < max_reply_bytes(1000) < 1000

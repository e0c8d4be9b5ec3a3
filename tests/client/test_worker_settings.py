"""Worker settings the server would refuse on every call are refused when the Worker is built."""

from __future__ import annotations

import pytest
import trio

from silo.client.worker import Worker
from tests.client.fake import FakeCluster


async def handler(ctx: object) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_concurrent_tasks": 1001}, "max_concurrent_tasks 1001 is outside 1..1000"),
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks 0 is outside 1..1000"),
        ({"lease_wait_ms": 30_001}, "lease_wait_ms 30001 is outside 0..30000"),
        ({"lease_wait_ms": -1}, "lease_wait_ms -1 is outside 0..30000"),
        ({"default_timeout_ms": 0}, "default_timeout_ms 0 is outside 1..86400000"),
        ({"default_timeout_ms": 86_400_001}, "default_timeout_ms 86400001 is outside"),
    ],
)
def test_out_of_range_settings_are_refused(options: dict[str, int], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Worker(FakeCluster(), "g", handler, **options)  # type: ignore[arg-type]


def test_limits_themselves_are_accepted() -> None:
    worker = Worker(FakeCluster(), "g", handler, max_concurrent_tasks=1000,  # type: ignore[arg-type]
                    lease_wait_ms=30_000, default_timeout_ms=86_400_000)
    assert worker.max_concurrent_tasks == 1000


async def test_lease_wait_zero_backs_off_on_empty_replies(autojump_clock: trio.abc.Clock) -> None:
    """A worker told not to long-poll must not busy-loop: with nothing to lease, its calls back
    off to about one a second."""
    cluster = FakeCluster(lease_ms=30_000, to_lease=[])
    worker = Worker(cluster, "g", handler, lease_wait_ms=0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(30)
        worker.stop(1)
    calls = len(cluster.calls_of("LeaseTasks"))
    assert 10 <= calls <= 50, calls

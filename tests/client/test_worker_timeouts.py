"""Per-job timeouts (``Task.timeout_ms``) against the fake cluster on the autojump clock."""

from __future__ import annotations

import trio

from silo.client.types import unpack
from silo.client.worker import TaskContext, Worker
from tests.client.fake import FakeCluster, make_task


async def test_job_timeout_overrides_the_worker_default(autojump_clock: trio.abc.Clock) -> None:
    cluster = FakeCluster(lease_ms=1000, to_lease=[make_task(1, timeout_ms=300)])
    seen: list[int | None] = []

    async def handler(ctx: TaskContext) -> None:
        seen.append(ctx.timeout_ms)
        await trio.sleep_forever()

    worker = Worker(cluster, "g", handler, lease_wait_ms=100,  # type: ignore[arg-type]
                    default_timeout_ms=60_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        with trio.fail_after(5):
            while "t1" not in cluster.recorded:
                await trio.sleep(0.01)
        reported_at = trio.current_time()
        await trio.sleep(3)
        worker.stop(1)
    outcome = cluster.recorded["t1"]
    assert outcome.failure is not None and outcome.failure.code == "TIMEOUT"
    assert unpack(outcome.failure.data)["timeout_ms"] == 300
    assert seen == [300]
    # The lease is no longer heartbeated once the TIMEOUT report was acknowledged.
    assert all(c.at <= reported_at for c in cluster.calls_of("Heartbeat"))
    assert worker.stats.timeouts == 1

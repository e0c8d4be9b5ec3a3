"""Two jobs that name the same two concurrency limits in opposite orders cannot deadlock.

J1 has limits [A, B] and J2 has [B, A], both with max 1. While A and B are both held by other
jobs, J1 waits for A and J2 for B. B's holder finishes first, then A's: J2 gets B, J1 gets A; if
each then waited for the other's slot while keeping its own, neither could ever run, and every
later job on A or B would wait behind them (DESIGN §5: no wait-for cycle). Both must complete,
and so must the jobs enqueued after them.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from silo.client import ConcurrencyLimit, JobHandle, SiloClient, TaskContext, Worker
from silo.wire import pb
from tests.integration.support import Raw, ServerProcess, wait_until

A = ConcurrencyLimit("A", 1)
B = ConcurrencyLimit("B", 1)


async def test_opposite_order_limits_both_complete_and_later_jobs_run(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process()
    await server.start()
    release = {"hold-A": trio.Event(), "hold-B": trio.Event()}
    running: set[str] = set()

    async def handler(ctx: TaskContext) -> str:
        running.add(ctx.job_id)
        if ctx.payload == "hold":
            with trio.fail_after(30):
                await release[ctx.job_id].wait()
        return ctx.job_id

    async with SiloClient.connect(server.address) as client:
        raw = Raw(client, server.address)
        worker = Worker(client, "limits", handler, max_concurrent_tasks=10, lease_wait_ms=500)

        async def succeeded(job_id: str) -> bool:
            return (await raw.get(job_id)).status == pb.JobStatus.SUCCEEDED

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            # A and B are both held while J1 and J2 line up for them.
            await client.enqueue("limits", "hold", id="hold-A", limits=[A])
            await client.enqueue("limits", "hold", id="hold-B", limits=[B])
            await wait_until(lambda: running >= {"hold-A", "hold-B"}, timeout=10,
                             what="the holders of A and B to run")
            j1 = await client.enqueue("limits", None, id="j1", limits=[A, B])
            j2 = await client.enqueue("limits", None, id="j2", limits=[B, A])
            # B's holder finishes first: J2 gets B and waits for A, where J1 is ahead of it.
            # Then A's holder finishes: J1 gets A and waits for B, which J2 holds.
            release["hold-B"].set()
            await wait_until(lambda: succeeded("hold-B"), timeout=10,
                             what="B's holder to finish")
            release["hold-A"].set()

            later = [
                await client.enqueue("limits", None, id="later-A", limits=[A]),
                await client.enqueue("limits", None, id="later-B", limits=[B]),
                await client.enqueue("limits", None, id="later-AB", limits=[A, B]),
                await client.enqueue("limits", None, id="later-BA", limits=[B, A]),
            ]
            handles: list[JobHandle] = [j1, j2, *later]

            async def states() -> list[tuple[str, str, str]]:
                return [(h.id, (job := await raw.get(h.id)).status.name, job.waiting_for)
                        for h in handles]

            with trio.move_on_after(15):
                while any(status != "SUCCEEDED" for _, status, _ in await states()):
                    await trio.sleep(0.1)
            seen = await states()
            stuck = [s for s in seen if s[1] != "SUCCEEDED"]
            assert not stuck, f"not SUCCEEDED 15s after the holders finished: {stuck}"
            for h in handles:
                assert await h.result(timeout=5) == h.id
            worker.stop(5)

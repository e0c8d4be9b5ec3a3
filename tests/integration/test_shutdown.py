"""Graceful shutdown of a server process: SIGTERM (or SIGINT) while LeaseTasks long polls are in
flight answers them, exits 0 well within the grace period, and a restart on the same data
directory finds every job as it was."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import trio

from silo.client import SiloClient, pack, unpack
from silo.rpc import RpcError
from silo.wire import pb
from tests.integration.support import Raw, ServerProcess

GRACE_S = 5.0
S = pb.JobStatus


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_with_long_polls_in_flight(
    server_process: Callable[..., ServerProcess], signum: signal.Signals
) -> None:
    # A long lease, so the job that is running at shutdown is still leased after the restart.
    server = server_process(lease_ms=60_000, shutdown_grace_s=GRACE_S)
    await server.start()
    with trio.fail_after(50):
        async with SiloClient.connect(server.address) as client:
            raw = Raw(client, server.address)
            # Jobs in every state.
            expected: dict[str, pb.JobStatus] = {}
            done = await raw.enqueue("work", "done")
            failed = await raw.enqueue("work", "failed")
            cancelled = await raw.enqueue("work", "cancelled")
            running = await raw.enqueue("work", "running")
            tasks = {t.job_id: t for t in (await raw.lease("w1", "work", max_tasks=10)).tasks}
            await raw.report(tasks[done], success=pack("result"))
            await raw.report(tasks[failed], failure=pb.Failure(code="NOPE"))
            await raw.report(tasks[cancelled], cancelled=pb.Cancelled())
            waiting = await raw.enqueue("work", "waiting")
            later = await raw.enqueue("work", "later", start_at_ms=int(time.time() * 1000)
                                      + 3_600_000)
            expected = {done: S.SUCCEEDED, failed: S.FAILED, cancelled: S.CANCELLED,
                        running: S.RUNNING, waiting: S.SCHEDULED, later: S.SCHEDULED}
            for job_id, status in expected.items():
                assert (await raw.get(job_id)).status == status

            answers: list[object] = []

            async def long_poll(i: int) -> None:
                try:
                    resp = await raw.lease(f"poller-{i}", "idle", wait_ms=25_000)
                    answers.append(len(resp.tasks))
                except RpcError as exc:
                    answers.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(long_poll, i)
                await trio.sleep(0.5)
                assert answers == []  # all four are waiting on the server
                sent = trio.current_time()
                server.send(signum)
                code = await server.wait(GRACE_S + 10)
                took = trio.current_time() - sent
            assert code == 0, server.log_tail()
            assert took < GRACE_S, f"exit took {took:.1f}s; grace is {GRACE_S}s"
            # The long polls were answered (empty), not cut off.
            assert answers == [0, 0, 0, 0]

            # The same data directory, the same port: everything is as it was.
            await server.start()
            for job_id, status in expected.items():
                assert (await raw.get(job_id)).status == status, job_id
            assert unpack((await raw.result(done)).result) == "result"
            assert (await raw.result(failed)).error_code == "NOPE"
            # The running job's lease survived: its worker can still report.
            await raw.report(tasks[running], success=pack("after restart"))
            assert unpack((await raw.result(running)).result) == "after restart"
            assert [t.job_id for t in (await raw.lease("w2", "work")).tasks] == [waiting]
            await raw.alive()

            server.send(signal.SIGTERM)
            assert await server.wait(GRACE_S + 10) == 0

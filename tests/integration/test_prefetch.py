"""Lease prefetch over real gRPC (DESIGN §4 "Delivery"): a worker holds tasks beyond its free
slots, runs them in lease order, and on stop hands the unstarted ones back (``released``),
which re-queues them at once without charging an attempt or waiting for lease expiry. A
prefetched task counts as delivered only once its handler starts: a worker killed (SIGKILL)
while holding prefetched tasks leaves them undelivered, so jobs with retry_count 0 still run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from silo.client import SiloClient, TaskContext, Worker
from silo.model import RELEASED, WORKER_CRASHED
from silo.wire import pb
from tests.integration.conftest import StartNode
from tests.integration.support import Raw, wait_until

REPO = Path(__file__).resolve().parents[2]

LEASE_MS = 60_000  # far longer than the test: nothing may wait for an expiry


async def test_a_released_lease_is_requeued_at_once(start_node: StartNode) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        job_id = await raw.enqueue("g", "work", retry=pb.RetryPolicy(retry_count=0))
        task = await raw.lease_one()
        await raw.heartbeat(task)  # acknowledged, and released all the same
        await raw.report(task, released=pb.Released())
        job = await raw.get(job_id, attempts=True)
        assert job.status == pb.JobStatus.SCHEDULED
        assert job.undelivered_count == 0
        assert [(a.state, a.error_code) for a in job.attempts] == [
            (pb.AttemptState.UNDELIVERED, RELEASED)]
        again = await raw.lease_one()
        assert again.attempt == 2 and again.task_id != task.task_id
        await raw.report(again)
        assert (await raw.get(job_id)).status == pb.JobStatus.SUCCEEDED


async def test_stopping_worker_hands_back_prefetched_tasks(start_node: StartNode) -> None:
    node = await start_node(lease_ms=LEASE_MS)
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        ids = [await raw.enqueue("g", n, retry=pb.RetryPolicy(retry_count=0)) for n in range(6)]
        started: list[int] = []
        release = trio.Event()

        async def slow(ctx: TaskContext) -> int:
            started.append(ctx.payload)
            await release.wait()
            return ctx.payload

        first = Worker(client, "g", slow, worker_id="w-first", max_concurrent_tasks=1,
                       prefetch=3, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.run)

            async def leased_four() -> bool:
                jobs = [await raw.get(i) for i in ids]
                return sum(j.status == pb.JobStatus.RUNNING for j in jobs) == 4

            await wait_until(leased_four, timeout=20, what="1 running + 3 prefetched tasks")
            assert started == [0]
            first.stop(20)
            await wait_until(lambda: first.stats.handed_back == 3, timeout=10,
                             what="the prefetched tasks to be handed back")

            async def handed_back() -> bool:
                jobs = [await raw.get(i) for i in ids]
                return sum(j.status == pb.JobStatus.SCHEDULED for j in jobs) == 5

            await wait_until(handed_back, timeout=10, what="the released jobs to be re-queued")
            release.set()
        assert started == [0]
        assert first.stats.reports_dropped == 0

        seen: list[int] = []

        async def quick(ctx: TaskContext) -> int:
            seen.append(ctx.payload)
            return ctx.payload

        second = Worker(client, "g", quick, worker_id="w-second", max_concurrent_tasks=2,
                        prefetch=2, lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(second.run)
            await wait_until(lambda: len(seen) == 5, timeout=20, what="the rest to run")
            second.stop(10)
        assert sorted(seen) == [1, 2, 3, 4, 5]
        released = 0
        for job_id in ids:
            job = await raw.get(job_id, attempts=True)
            assert job.status == pb.JobStatus.SUCCEEDED, job_id
            assert job.undelivered_count == 0
            states = [(a.state, a.error_code) for a in job.attempts]
            if len(states) == 2:
                released += 1
                assert states == [(pb.AttemptState.SUCCEEDED, ""),
                                  (pb.AttemptState.UNDELIVERED, RELEASED)], job_id
            else:
                assert states == [(pb.AttemptState.SUCCEEDED, "")], job_id
        assert released == 3


HANGING_HANDLER = """\
import trio


async def hang(ctx):
    with open("started.txt", "a") as f:
        f.write(ctx.job_id + "\\n")
    await trio.sleep_forever()
"""

KILL_LEASE_MS = 1500


async def test_a_killed_workers_prefetched_tasks_run_elsewhere(
    start_node: StartNode, tmp_path: Path
) -> None:
    """``silo worker`` (1 slot, prefetch 3) holds one running and three prefetched tasks of
    retry_count-0 jobs for several lease lengths (the prefetched leases kept alive by
    heartbeats that do not acknowledge them), then is killed with SIGKILL. The started job
    fails WORKER_CRASHED (its one attempt was delivered); the three prefetched jobs expire
    undelivered and another worker runs them to SUCCEEDED."""
    node = await start_node(lease_ms=KILL_LEASE_MS)
    (tmp_path / "prefetch_kill_handlers.py").write_text(HANGING_HANDLER)
    async with SiloClient.connect(node.address) as client:
        raw = Raw(client, node.address)
        ids = [await raw.enqueue("g", n, retry=pb.RetryPolicy(retry_count=0)) for n in range(4)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        log = (tmp_path / "worker.log").open("wb")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "silo", "worker", "prefetch_kill_handlers:hang",
             "--task-group", "g", "--concurrency", "1", "--prefetch", "3",
             "--address", node.address],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        try:
            async def held() -> bool:
                jobs = [await raw.get(i) for i in ids]
                started = tmp_path / "started.txt"
                return (all(j.status == pb.JobStatus.RUNNING for j in jobs)
                        and started.exists() and started.read_text().count("\n") == 1)

            await wait_until(held, timeout=30, what="1 running + 3 prefetched tasks")
            await trio.sleep(3 * KILL_LEASE_MS / 1000)  # the leases live on by heartbeats
            for job_id in ids:
                job = await raw.get(job_id, attempts=True)
                assert job.status == pb.JobStatus.RUNNING, job_id
                assert [a.attempt for a in job.attempts] == [1], job_id
            process.send_signal(signal.SIGKILL)
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        (started_job,) = (tmp_path / "started.txt").read_text().split()

        seen: list[str] = []

        async def quick(ctx: TaskContext) -> int:
            seen.append(ctx.job_id)
            return ctx.payload

        other = Worker(client, "g", quick, worker_id="w-other", max_concurrent_tasks=2,
                       lease_wait_ms=200)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other.run)

            async def ended() -> bool:
                jobs = [await raw.get(i) for i in ids]
                return all(j.status in (pb.JobStatus.SUCCEEDED, pb.JobStatus.FAILED)
                           for j in jobs)

            await wait_until(ended, timeout=30, what="every job to end")
            other.stop(10)
        assert sorted(seen) == sorted(i for i in ids if i != started_job)
        for job_id in ids:
            job = await raw.get(job_id, attempts=True)
            states = [(a.state, a.error_code) for a in job.attempts]  # newest first
            if job_id == started_job:
                assert job.status == pb.JobStatus.FAILED, states
                assert states == [(pb.AttemptState.FAILED, WORKER_CRASHED)]
            else:
                assert job.status == pb.JobStatus.SUCCEEDED, (job_id, states)
                assert states == [(pb.AttemptState.SUCCEEDED, ""),
                                  (pb.AttemptState.UNDELIVERED, "")], job_id
                assert job.undelivered_count == 1

"""No wait-for cycle between limits (DESIGN §5): jobs naming the same concurrency queues in
different orders never wait on each other forever, a job waiting for a rate-limit token holds no
concurrency slot, and parked requests are still granted by priority, then due time."""

from __future__ import annotations

import random

from silo.model import DEFAULT_TENANT as T
from silo.model import ConcurrencyLimit, JobStatus, RateLimit, Success
from tests.shard.support import (
    World,
    check_counters,
    holder_rows,
    lease,
    lease_one,
    limited_job,
    report,
    request_rows,
    where_is,
)

S = JobStatus
A = ConcurrencyLimit("A", 1)
B = ConcurrencyLimit("B", 1)
C = ConcurrencyLimit("C", 1)
QA = (T, "A")
QB = (T, "B")


async def run_to_completion(
    world: World, shard, job_ids: list[str], *, rounds: int = 200, step_ms: int = 100,  # noqa: ANN001
    rng: random.Random | None = None,
) -> list[str]:
    """Lease and succeed whatever is leasable, round after round (advancing the clock when
    nothing is), until every job in ``job_ids`` has succeeded; returns the order they ran in.
    Fails when ``rounds`` pass with some job still not done (a wedged queue)."""
    ran: list[str] = []
    for _ in range(rounds):
        tasks = [t for t in await lease(shard) if t.refresh is None]
        if rng is not None:
            rng.shuffle(tasks)
        for task in tasks:
            ran.append(task.job_id)
            await shard.report_outcome(report(task, Success()))
        statuses = [await where_is(shard, j) for j in job_ids]
        if all(s == "SUCCEEDED" for s in statuses):
            return ran
        if not tasks:
            world.advance(step_ms)
    stuck = {j: await where_is(shard, j) for j in job_ids}
    raise AssertionError(
        f"jobs did not complete: {stuck}; holders {await holder_rows(shard)}, "
        f"requests {await request_rows(shard)}"
    )


async def test_two_jobs_naming_two_queues_in_opposite_orders_both_complete(
    world: World,
) -> None:
    """J1 [A, B] and J2 [B, A], each queue held by someone else when they arrive: once the
    holders finish, neither may end up holding one queue while parked on the other's."""
    async with world.open() as shard:
        await shard.enqueue(limited_job("hold-a", A))
        await shard.enqueue(limited_job("hold-b", B))
        world.advance(1)
        await shard.enqueue(limited_job("j1", A, B))
        world.advance(1)
        await shard.enqueue(limited_job("j2", B, A))
        held = {t.job_id: t for t in await lease(shard)}
        assert set(held) == {"hold-a", "hold-b"}
        # B first: J2 gets B and asks for A, which then goes to J1 (it asked for A first).
        await shard.report_outcome(report(held["hold-b"], Success()))
        await shard.report_outcome(report(held["hold-a"], Success()))
        # Whatever waits now, someone must be runnable: the two queues are free of running jobs.
        ran = await run_to_completion(world, shard, ["j1", "j2"])
        assert sorted(ran) == ["j1", "j2"]
        assert await holder_rows(shard) == {}
        assert await request_rows(shard) == {}
        # A later job on either queue is not stuck behind them either.
        await shard.enqueue(limited_job("later", A))
        assert (await lease_one(shard)).job_id == "later"
        await check_counters(shard)


async def test_twenty_jobs_with_random_orders_over_three_shared_queues_all_complete(
    memory_world: World,
) -> None:
    world = memory_world
    queues = [A, B, C]
    for seed in range(5):
        rng = random.Random(seed)
        async with world.open() as shard:
            ids = []
            # Every queue is held when the jobs arrive, so they park and are granted one by one
            # as slots free up, in whatever interleaving the releases produce.
            holders = [f"s{seed}-hold-{q.key}" for q in queues]
            for job_id, q in zip(holders, queues, strict=True):
                await shard.enqueue(limited_job(job_id, q))
            for i in range(20):
                names = rng.sample(queues, rng.randint(2, 3))
                job_id = f"s{seed}-j{i:02d}"
                ids.append(job_id)
                world.advance(1)
                await shard.enqueue(limited_job(job_id, *names, priority=rng.choice([10, 50])))
            await run_to_completion(world, shard, holders + ids, rng=rng)
            assert await holder_rows(shard) == {}
            assert await request_rows(shard) == {}
            await check_counters(shard)


async def test_parked_requests_are_granted_by_priority_whatever_their_limit_order(
    world: World,
) -> None:
    """Jobs of several priorities naming A and B in both orders run highest priority first
    (then by due time), one at a time, as the slots free up."""
    async with world.open() as shard:
        await shard.enqueue(limited_job("hold-a", A))
        await shard.enqueue(limited_job("hold-b", B))
        jobs = [
            ("low-ab", (A, B), 80),
            ("mid-ba", (B, A), 50),
            ("high-ba", (B, A), 10),
            ("mid-ab", (A, B), 50),
            ("high-ab", (A, B), 10),
            ("low-ba", (B, A), 80),
        ]
        for job_id, limits, priority in jobs:
            world.advance(1)
            await shard.enqueue(limited_job(job_id, *limits, priority=priority))
        held = {t.job_id: t for t in await lease(shard)}
        assert set(held) == {"hold-a", "hold-b"}
        await shard.report_outcome(report(held["hold-b"], Success()))
        await shard.report_outcome(report(held["hold-a"], Success()))
        order = []
        for _ in range(len(jobs)):
            tasks = await lease(shard)
            assert len(tasks) == 1, [t.job_id for t in tasks]  # A and B admit one job at a time
            order.append(tasks[0].job_id)
            await shard.report_outcome(report(tasks[0], Success()))
        assert order == ["high-ba", "high-ab", "mid-ba", "mid-ab", "low-ab", "low-ba"]
        assert await holder_rows(shard) == {}


async def test_a_job_waiting_for_a_rate_token_holds_no_concurrency_slot(world: World) -> None:
    rate = RateLimit("api", "k", 1, 10_000)
    async with world.open() as shard:
        await shard.enqueue(limited_job("spend", rate))
        world.advance(1)
        await shard.enqueue(limited_job("waits", A, rate))
        view = await shard.get_job(T, "waits")
        assert await where_is(shard, "waits") == "TIMER"
        assert "rate limit api/k" in view.waiting_for
        # It holds no slot of A meanwhile: GetQueue shows none, and another job on A runs.
        assert shard.queue_info(T, "A")["holders"] == 0
        assert await holder_rows(shard) == {}
        world.advance(1)
        await shard.enqueue(limited_job("other", A))
        assert {t.job_id for t in await lease(shard)} == {"spend", "other"}
        assert await holder_rows(shard) == {QA: ["other"]}
        # Once its token is due it acquires A (here: parks behind the running job).
        world.advance(10_000)
        await shard.promote_due()
        assert await where_is(shard, "waits") == "PARKED"
        assert await request_rows(shard) == {QA: ["waits"]}


async def test_a_job_granted_a_slot_does_not_keep_it_while_waiting_for_a_token(
    world: World,
) -> None:
    """[A, rate] granted A by a release while the bucket is empty: it waits for the token
    without A, and the next request on A gets the slot."""
    rate = RateLimit("api", "k", 1, 10_000)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", A))
        await shard.enqueue(limited_job("spend", rate))
        world.advance(1)
        await shard.enqueue(limited_job("both", A, rate))
        world.advance(1)
        await shard.enqueue(limited_job("a-only", A))
        assert shard.queue_info(T, "A")["holders"] == 1
        tasks = {t.job_id: t for t in await lease(shard)}
        await shard.report_outcome(report(tasks["holder"], Success()))
        assert await where_is(shard, "both") in ("TIMER", "PARKED")
        info = shard.queue_info(T, "A")
        rows = await holder_rows(shard)
        assert rows.get(QA) == ["a-only"], rows
        assert info["holders"] == 1 and info["holder_task_ids"] != []
        assert (await lease_one(shard)).job_id == "a-only"

"""Rate limits through a shard (DESIGN §5): a sliding window per (tenant, name, key), at most
``limit`` tokens in any ``per_ms``; a job that finds no token reserves the next one and waits in
the timer index for its time (no polling), then goes on to its next limit."""

from __future__ import annotations

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
RATE = RateLimit("api", "k", 2, 1000)  # two per second


async def test_a_job_without_a_token_waits_for_its_reserved_token(world: World) -> None:
    async with world.open() as shard:
        t0 = world.now_ms()
        await shard.enqueue_batch([limited_job(f"j{i}", RATE) for i in range(5)])
        assert [await where_is(shard, f"j{i}") for i in range(5)] == [
            "READY", "READY", "TIMER", "TIMER", "TIMER",
        ]
        # Each waiting job has reserved the next token: two per window of 1000 ms, a token
        # granted one period after the one two before it.
        for i, due in [(2, t0 + 1000), (3, t0 + 1000), (4, t0 + 2000)]:
            view = await shard.get_job(T, f"j{i}")
            assert view.state.next_attempt_at_ms == due
            assert view.waiting_for == f"rate limit api/k (token reserved for {due})"
        assert {t.job_id for t in await lease(shard)} == {"j0", "j1"}
        # Nothing polls while they wait: promoting and leasing before the time write nothing.
        writes = shard.statistics().synced_writes
        world.advance(999)
        assert await shard.promote_due() == 0
        assert await lease(shard) == []
        assert shard.statistics().synced_writes == writes
        world.advance(1)
        assert sorted(t.job_id for t in await lease(shard)) == ["j2", "j3"]
        world.advance(999)
        assert await lease(shard) == []
        world.advance(1)
        assert [t.job_id for t in await lease(shard)] == ["j4"]
        await check_counters(shard)


async def test_the_window_frees_its_tokens_after_a_period(memory_world: World) -> None:
    world = memory_world
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"a{i}", RATE) for i in range(2)])
        world.advance(1000)  # two tokens free again, and no more than two
        world.advance(5000)
        await shard.enqueue_batch([limited_job(f"b{i}", RATE) for i in range(3)])
        assert [await where_is(shard, f"b{i}") for i in range(3)] == ["READY", "READY", "TIMER"]
        assert (await shard.get_job(T, "b2")).state.next_attempt_at_ms == world.now_ms() + 1000


async def test_tenants_and_names_and_keys_are_separate_buckets(world: World) -> None:
    one = RateLimit("api", "k", 1, 60_000)
    async with world.open() as shard:
        await shard.enqueue(limited_job("first", one))
        await shard.enqueue(limited_job("same", one))
        await shard.enqueue(limited_job("tenant", one, tenant="other"))
        await shard.enqueue(limited_job("name", RateLimit("db", "k", 1, 60_000)))
        await shard.enqueue(limited_job("key", RateLimit("api", "k2", 1, 60_000)))
        assert await where_is(shard, "same") == "TIMER"
        for job_id, tenant in [("first", T), ("tenant", "other"), ("name", T), ("key", T)]:
            assert await where_is(shard, job_id, tenant) == "READY"


async def test_after_its_token_a_job_goes_on_to_the_next_limit(world: World) -> None:
    a = ConcurrencyLimit("A", 1)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", a))
        await shard.enqueue(limited_job("spend", RATE))
        await shard.enqueue(limited_job("spend2", RATE))
        await shard.enqueue(limited_job("j", RATE, a))
        view = await shard.get_job(T, "j")
        assert view.state.held == 1  # the token is reserved
        assert "rate limit" in view.waiting_for
        assert await request_rows(shard) == {}
        world.advance(1000)
        await shard.promote_due()
        # The token is taken; now it waits for A (without another token).
        assert await where_is(shard, "j") == "PARKED"
        assert "'A'" in (await shard.get_job(T, "j")).waiting_for
        holder = next(t for t in await lease(shard) if t.job_id == "holder")
        await shard.report_outcome(report(holder, Success()))
        assert await where_is(shard, "j") == "READY"
        assert await holder_rows(shard) == {(T, "A"): ["j"]}
        task = await lease_one(shard)
        assert task.job_id == "j"


async def test_a_job_takes_its_rate_token_before_its_slots(world: World) -> None:
    """[A, rate]: the token comes first (DESIGN §5: no slot is held while waiting for a
    token); once it is due the job acquires A, here granted by a release."""
    a = ConcurrencyLimit("A", 1)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", a))
        await shard.enqueue_batch([limited_job(f"spend{i}", RATE) for i in range(2)])
        await shard.enqueue(limited_job("j", a, RATE))
        view = await shard.get_job(T, "j")
        assert (await where_is(shard, "j"), view.state.held) == ("TIMER", 1)
        assert view.state.next_attempt_at_ms == world.now_ms() + 1000
        assert view.info.limits == (RATE, a)  # stored in the order they are acquired
        assert await holder_rows(shard) == {(T, "A"): ["holder"]}
        world.advance(1000)
        await shard.promote_due()
        assert await where_is(shard, "j") == "PARKED"
        task = next(t for t in await lease(shard) if t.job_id == "holder")
        await shard.report_outcome(report(task, Success()))
        assert await where_is(shard, "j") == "READY"
        assert await holder_rows(shard) == {(T, "A"): ["j"]}


# -- cancelled reservations -----------------------------------------------------------------------

EVERY_3S = RateLimit("api", "slow", 1, 3000)


async def test_cancel_of_jobs_waiting_for_their_tokens_gives_the_tokens_back(
    world: World,
) -> None:
    """1 per 3 s, 20 jobs, the 19 still waiting cancelled: a new job waits one period, not 20."""
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i:02d}", EVERY_3S) for i in range(20)])
        assert (await shard.get_job(T, "j19")).state.next_attempt_at_ms == world.now_ms() + 57_000
        assert (await lease_one(shard)).job_id == "j00"
        for i in range(1, 20):
            await shard.cancel(T, f"j{i:02d}")
        world.advance(1)
        await shard.enqueue(limited_job("next", EVERY_3S))
        due = (await shard.get_job(T, "next")).state.next_attempt_at_ms
        assert due is not None and due <= world.now_ms() + 6_000
        world.advance(due - world.now_ms())
        assert (await lease_one(shard)).job_id == "next"
        await check_counters(shard)


async def test_cancel_of_a_waiting_job_gives_its_token_to_the_next_job(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i}", EVERY_3S) for i in range(2)])
        assert await where_is(shard, "j1") == "TIMER"
        await shard.cancel(T, "j1")
        await shard.enqueue(limited_job("j2", EVERY_3S))
        # j2 takes the token j1 gave back: due when j1 would have been, not a period later.
        assert (await shard.get_job(T, "j2")).state.next_attempt_at_ms == world.now_ms() + 3000
        # A job that already took its token (it waits for a slot now) keeps it spent.
        await shard.enqueue(limited_job("holder", ConcurrencyLimit("A", 1)))
        world.advance(3000)
        await shard.enqueue(limited_job("parked", EVERY_3S, ConcurrencyLimit("A", 1)))
        world.advance(3000)
        await shard.promote_due()
        assert await where_is(shard, "parked") == "PARKED"
        await shard.cancel(T, "parked")
        await shard.enqueue(limited_job("j3", EVERY_3S))
        assert (await shard.get_job(T, "j3")).state.next_attempt_at_ms == world.now_ms() + 3000

"""Rate limits are exact (issue 8, defect 4; DESIGN §5): whatever is enqueued and cancelled, no
window of ``per_ms`` sees more than ``limit`` tokens granted, and a cancelled job's token goes
to the job holding the bucket's latest reservation, so the survivors start no later than they
would had only they been enqueued.

The random runs lease every task at the instant it becomes due, so lease times are token times.
"""

from __future__ import annotations

import random

import pytest

from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import JobStatus, RateLimit, Success
from sim.audit import ShardImage, audit_image
from tests.shard.support import (
    World,
    check_counters,
    lease,
    lease_one,
    limited_job,
    report,
    store_items,
    where_is,
)

MAX_STEPS = 1000


def eager_schedule(requests: list[int], limit: int, per_ms: int) -> list[int]:
    """The earliest token times for requests made at ``requests`` (in order) under "at most
    ``limit`` per any ``per_ms`` window", first come first served."""
    slots: list[int] = []
    for at in requests:
        slot = at if not slots else max(at, slots[-1])
        if len(slots) >= limit:
            slot = max(slot, slots[-limit] + per_ms)
        slots.append(slot)
    return slots


def windows_over(times: list[int], limit: int, per_ms: int) -> list[tuple[int, int]]:
    """Every window ``[t, t + per_ms)`` that holds more than ``limit`` of ``times``:
    ``(t, how many)``."""
    ts = sorted(times)
    out = []
    for i in range(len(ts) - limit):
        if ts[i + limit] - ts[i] < per_ms:
            j = i
            while j < len(ts) and ts[j] - ts[i] < per_ms:
                j += 1
            out.append((ts[i], j - i))
    return out


async def run_random(world: World, seed: int) -> None:
    rng = random.Random(seed)
    rate = RateLimit("api", "k", rng.randint(1, 4), rng.choice([100, 700, 3000]))
    actions = rng.randint(10, 40)
    enqueued_at: dict[str, int] = {}
    order: list[str] = []
    given_back: set[str] = set()  # cancelled while waiting for their token
    leased_at: dict[str, int] = {}
    async with world.open() as shard:
        next_action = world.now_ms()
        for _ in range(MAX_STEPS):
            due = shard.next_timer_due_ms()
            now = world.now_ms()
            if actions == 0 and due is None:
                break
            step_to = min(x for x in (due, next_action if actions else None) if x is not None)
            if step_to > now:
                world.advance(step_to - now)
            now = world.now_ms()
            for task in await lease(shard):
                leased_at[task.job_id] = now
                await shard.report_outcome(report(task, Success()))
            if actions and now >= next_action:
                actions -= 1
                waiting = [j for j in order if await where_is(shard, j) == "TIMER"]
                if waiting and rng.random() < 0.4:
                    # Any waiting job: the latest, the first, or one in the middle.
                    victim = rng.choice(waiting)
                    await shard.cancel(T, victim)
                    given_back.add(victim)
                else:
                    ids = [f"j{len(order) + i:03d}" for i in range(rng.randint(1, 3))]
                    await shard.enqueue_batch([limited_job(j, rate) for j in ids])
                    for j in ids:
                        enqueued_at[j] = now
                        order.append(j)
                    for task in await lease(shard):
                        leased_at[task.job_id] = now
                        await shard.report_outcome(report(task, Success()))
                next_action = now + rng.choice([0, 1, rate.per_ms // 7, rate.per_ms // 2])
                if next_action == now:
                    next_action += 1
        else:
            pytest.fail(f"seed {seed}: not drained in {MAX_STEPS} steps")
        assert shard.next_timer_due_ms() is None
        over = windows_over(list(leased_at.values()), rate.limit, rate.per_ms)
        assert over == [], (
            f"seed {seed}: {rate.limit} per {rate.per_ms} ms exceeded in windows {over}"
        )
        survivors = [j for j in order if j not in given_back]
        assert sorted(leased_at) == sorted(survivors)
        ideal = eager_schedule([enqueued_at[j] for j in survivors], rate.limit, rate.per_ms)
        got = sorted(leased_at[j] for j in survivors)
        late = [(g, i) for g, i in zip(got, ideal, strict=True) if g > i]
        assert late == [], f"seed {seed}: survivors later than with only them enqueued: {late}"
        await check_counters(shard)
        assert audit_image(ShardImage.parse(await store_items(shard)), "shard") == []


@pytest.mark.parametrize("seed", range(40))
async def test_no_window_sees_more_than_the_limit_whatever_is_cancelled(
    memory_world: World, seed: int
) -> None:
    await run_random(memory_world, seed)


EVERY_3S = RateLimit("api", "slow", 1, 3000)


@pytest.mark.parametrize("seed", range(6))
async def test_any_19_of_20_cancelled_a_new_job_runs_within_6_s(world: World, seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"j{i:02d}" for i in range(20)]
    async with world.open() as shard:
        t0 = world.now_ms()
        await shard.enqueue_batch([limited_job(j, EVERY_3S) for j in ids])
        cancelled = rng.sample(ids, 19)  # in random order; j00 (READY, token spent) may be one
        if seed == 0:
            cancelled = ids[:19]  # the first ones, j19 left waiting 57 s
        for j in cancelled:
            await shard.cancel(T, j)
        (survivor,) = set(ids) - set(cancelled)
        if survivor != "j00":
            assert (await shard.get_job(T, survivor)).state.next_attempt_at_ms == t0 + 3000
        world.advance(1)
        await shard.enqueue(limited_job("next", EVERY_3S))
        due = (await shard.get_job(T, "next")).state.next_attempt_at_ms
        assert due is not None and due <= world.now_ms() + 6000
        got: list[tuple[int, str]] = []
        while len(got) < 2:
            step = shard.next_timer_due_ms()
            if step is not None and step > world.now_ms():
                world.advance(step - world.now_ms())
            for task in await lease(shard):
                got.append((world.now_ms(), task.job_id))
            assert world.now_ms() <= t0 + 6001
        assert [j for _, j in got] == [survivor, "next"]
        await check_counters(shard)


async def test_the_latest_job_moves_into_a_freed_slot_and_the_horizon_moves_back(
    world: World,
) -> None:
    rate = RateLimit("api", "k", 1, 1000)
    async with world.open() as shard:
        t0 = world.now_ms()
        await shard.enqueue_batch([limited_job(f"j{i}", rate) for i in range(5)])
        await shard.cancel(T, "j2")  # waits for t0 + 2000; j4 (t0 + 4000) takes it
        due = {j: (await shard.get_job(T, j)).state.next_attempt_at_ms for j in ("j3", "j4")}
        assert due == {"j3": t0 + 3000, "j4": t0 + 2000}
        await shard.cancel(T, "j3")  # now the latest itself: the horizon just moves back
        assert (await shard.get_job(T, "j4")).state.next_attempt_at_ms == t0 + 2000
        await shard.enqueue(limited_job("j5", rate))
        assert (await shard.get_job(T, "j5")).state.next_attempt_at_ms == t0 + 3000
    # The reservation index is on disk and rebuilt on open: the same state after a reopen.
    async with world.open() as shard:
        slots = sorted(shard._mirror.reservations.values())
        assert slots == [t0, t0 + 1000, t0 + 2000, t0 + 3000]
        await shard.enqueue(limited_job("j6", rate))
        assert (await shard.get_job(T, "j6")).state.next_attempt_at_ms == t0 + 4000
        assert audit_image(ShardImage.parse(await store_items(shard)), "shard") == []


async def test_expedite_does_not_let_a_job_skip_its_rate_token(world: World) -> None:
    async with world.open() as shard:
        t0 = world.now_ms()
        await shard.enqueue_batch([limited_job(f"j{i}", EVERY_3S) for i in range(2)])
        await shard.expedite(T, "j1")
        assert await where_is(shard, "j1") == "TIMER"
        assert (await shard.get_job(T, "j1")).state.next_attempt_at_ms == t0 + 3000
        assert [t.job_id for t in await lease(shard)] == ["j0"]
        world.advance(2999)
        assert await lease(shard) == []
        world.advance(1)
        assert (await lease_one(shard)).job_id == "j1"


async def test_the_audit_finds_a_waiting_job_without_its_reservation(world: World) -> None:
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i}", EVERY_3S) for i in range(2)])
        items = await store_items(shard)
        assert (await shard.get_job(T, "j1")).state.status == JobStatus.SCHEDULED
    lost = [(k, v) for k, v in items if not (k[0] == Prefix.RATE_RESERVATION and b"j1" in k)]
    problems = audit_image(ShardImage.parse(lost), "shard")
    assert [inv for inv, _ in problems] == [13], problems
    assert "no reservation row" in problems[0][1]


async def test_a_forward_wall_step_keeps_a_waiting_jobs_reservation_and_idles_the_loop(
    world: World,
) -> None:
    """Timers fall due by the monotonic clock, reservations expire by wall time: after a wall
    step past a waiting job's slot and period, its row stays (its job still waits for it) and
    the timer loop has nothing due, rather than waking again and again for that row."""
    rate = RateLimit("api", "k", 1, 1000)
    async with world.open() as shard:
        await shard.enqueue_batch([limited_job(f"j{i}", rate) for i in range(2)])
        assert (await lease_one(shard)).job_id == "j0"
        world.step_wall_ms(5000)
        await shard.promote_due()
        assert await where_is(shard, "j1") == "TIMER"
        next_round = shard._loops._next_round_ms()
        assert next_round is not None and next_round > world.monotonic_ms()
        assert audit_image(ShardImage.parse(await store_items(shard)), "shard") == []
        world.advance(1000)
        assert (await lease_one(shard)).job_id == "j1"
        await shard.promote_due()
        assert shard._mirror.reservations == {}  # both a period past their slots (wall time)


async def test_a_backward_wall_step_after_rows_are_forgotten_keeps_the_window(
    world: World,
) -> None:
    """A reservation's row goes once the wall clock passes ``slot + per_ms``; if the wall clock
    then steps back, a new reservation must still not fall within ``per_ms`` of the forgotten
    slots (chaos seed 110): the shard's stored floor keeps it out, across a reopen too."""
    rate = RateLimit("api", "k", 2, 1000)
    async with world.open() as shard:
        t0 = world.now_ms()
        await shard.enqueue_batch([limited_job(f"j{i}", rate) for i in range(2)])
        assert sorted(t.job_id for t in await lease(shard)) == ["j0", "j1"]
        world.advance(1100)
        await shard.promote_due()
        assert shard._mirror.reservations == {}  # both forgotten: a period past their slots
        assert shard._mirror.rate_floor_ms == t0 + 1000
        world.step_wall_ms(-1500)  # the wall clock reads t0 - 400
        await shard.enqueue(limited_job("j2", rate))
        assert await where_is(shard, "j2") == "TIMER"
        assert (await shard.get_job(T, "j2")).state.next_attempt_at_ms == t0 + 1000
    async with world.open() as shard:
        assert shard._mirror.rate_floor_ms == t0 + 1000
        await shard.enqueue(limited_job("j3", rate))
        assert (await shard.get_job(T, "j3")).state.next_attempt_at_ms == t0 + 1000
        world.advance(1399)
        assert await lease(shard) == []
        world.advance(1)
        assert sorted(t.job_id for t in await lease(shard)) == ["j2", "j3"]
        assert audit_image(ShardImage.parse(await store_items(shard)), "shard") == []
        await check_counters(shard)


async def test_a_token_given_back_at_the_latest_jobs_own_slot_keeps_its_deadline(
    world: World,
) -> None:
    """Two jobs wait for tokens at the same slot; cancelling the earlier one moves the latest
    "into" its own time. Its timer must keep the monotonic deadline it has, whatever the wall
    clock did since (rate_limits seed 127: re-indexed after a forward step, it ran early)."""
    rate = RateLimit("api", "k", 2, 1000)
    async with world.open() as shard:
        t0 = world.now_ms()
        await shard.enqueue_batch([limited_job(f"j{i}", rate) for i in range(4)])
        assert sorted(t.job_id for t in await lease(shard)) == ["j0", "j1"]
        due = {j: (await shard.get_job(T, j)).state.next_attempt_at_ms for j in ("j2", "j3")}
        assert due == {"j2": t0 + 1000, "j3": t0 + 1000}
        world.step_wall_ms(500)
        await shard.cancel(T, "j2")
        assert (await shard.get_job(T, "j3")).state.next_attempt_at_ms == t0 + 1000
        world.advance(999)
        assert await lease(shard) == []
        world.advance(1)
        assert (await lease_one(shard)).job_id == "j3"
        assert audit_image(ShardImage.parse(await store_items(shard)), "shard") == []

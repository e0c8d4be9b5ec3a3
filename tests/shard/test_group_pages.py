"""Group pages (:mod:`silo.shard.pages`): each task group keeps only its first ready rows in
memory and each concurrency queue its first parked requests (priority, then due order), reads
the next page back as leases and grants take them (a grant in the middle of an operation too)
and drops the latest rows past the memory bound; leases, grants, cancels and counts behave
exactly as with every row in memory.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from silo.errors import Unavailable
from silo.keys import Prefix
from silo.model import DEFAULT_TENANT as T
from silo.model import ConcurrencyLimit, JobStatus, Success, Task
from silo.shard import JobShard, ShardConfig
from silo.shard.mirror import ShardMirror
from silo.shard.pages import GroupPaging
from silo.shard.tables import ready_key, request_key
from tests.shard.support import (
    LEASE_MS,
    World,
    check_counters,
    lease,
    limited_job,
    new_job,
    report,
    request_rows,
    status_of,
    store_items,
    where_is,
)
from tests.shard.test_timer_pages import _Clock, _DurableStore, write_both


class _Store(_DurableStore):
    async def count_keys(self, start: bytes, end: bytes) -> int:
        return sum(1 for k in self.rows if start <= k < end)


PAGED = ShardConfig(lease_ms=LEASE_MS, ready_page_rows=2, ready_memory_rows=5,
                    request_page_rows=2, request_memory_rows=5)
_READY = bytes((Prefix.READY,))
N = 12


def _world(tmp_path, kind: str = "memory") -> World:  # noqa: ANN001
    return World(kind, str(tmp_path), config=PAGED, trio_follows=False)


async def _check_pages(shard: JobShard) -> None:
    """Each group holds exactly its stored ready rows up to its frontier, and counts them all."""
    m = shard._mirror
    rows = {k: v for k, v in await store_items(shard) if k[:1] == _READY}
    stored = sorted(rows)
    assert [k for k in stored if m.ready_lookup(k) is not False] == list(m.ready)
    by_group: dict[str, int] = {}
    for k in stored:
        group = Task.decode(k, rows[k]).task_group
        by_group[group] = by_group.get(group, 0) + 1
    assert m.ready_per_group == by_group


async def _fill(shard: JobShard, n: int = N, group: str = "g") -> None:
    # Enqueued in reverse of their lease order: only priority may decide.
    for i in reversed(range(1, n + 1)):
        name = "j" if group == "g" else group
        await shard.enqueue(new_job(f"{name}{i:02}", priority=i, group=group))


@pytest.mark.parametrize("kind", ["memory", "leveldb"])
async def test_ready_rows_are_paged_in_priority_order(tmp_path, kind: str) -> None:  # noqa: ANN001
    world = _world(tmp_path, kind)
    async with world.open() as shard:
        await _fill(shard)
        m = shard._mirror
        # Paged out where an operation starts: at most the bound plus one batch (one job).
        assert len(m.ready) <= PAGED.ready_memory_rows + 1
        assert "g" in m.ready_pages.frontiers  # the latest ones are on disk only
        assert shard.statistics().due_tasks_per_task_group == {"g": N}  # counted, not held
        await _check_pages(shard)
        leased = []
        for _ in range(N):
            got = await lease(shard, 1, group="g")
            leased += [t.job_id for t in got]
            await _check_pages(shard)
        assert leased == [f"j{i:02}" for i in range(1, N + 1)]
        assert m.ready_pages.frontiers == {} and not m.ready and m.ready_per_group == {}
        await check_counters(shard)


async def test_an_open_reads_one_page_per_group(tmp_path) -> None:  # noqa: ANN001
    world = _world(tmp_path)
    async with world.open() as shard:
        await _fill(shard, group="a")
        await _fill(shard, 3, group="b")
        await _fill(shard, 1, group="c")
    async with world.open() as shard:
        m = shard._mirror
        assert m.ready_pages.in_memory == {"a": 2, "b": 2, "c": 1}
        assert sorted(m.ready_pages.frontiers) == ["a", "b"]
        assert m.ready_per_group == {"a": N, "b": 3, "c": 1}
        await _check_pages(shard)
        # A lease wider than what memory holds takes the page it has; the next reads on.
        assert [t.job_id for t in await lease(shard, 10, group="a")] == ["a01", "a02"]
        assert [t.job_id for t in await lease(shard, 10, group="a")] == ["a03", "a04"]
        await _check_pages(shard)
        await check_counters(shard)


async def test_writes_beyond_the_frontier(tmp_path) -> None:  # noqa: ANN001
    world = _world(tmp_path)
    async with world.open() as shard:
        await _fill(shard)
    async with world.open() as shard:
        m = shard._mirror
        frontier = m.ready_pages.frontiers["g"]
        # A put beyond the frontier stays on disk only; one before it is held at once.
        await shard.enqueue(new_job("late", priority=99, group="g"))
        await shard.enqueue(new_job("first", priority=0, group="g"))
        assert m.ready_pages.frontiers["g"] == frontier
        assert shard.statistics().due_tasks_per_task_group == {"g": N + 2}
        await shard.cancel(T, "j09")  # its ready row is beyond the frontier: read from disk
        assert await status_of(shard, "j09") == JobStatus.CANCELLED
        assert shard.statistics().due_tasks_per_task_group == {"g": N + 1}
        await _check_pages(shard)
        await check_counters(shard)
        leased = []
        for _ in range(N + 1):
            leased += [t.job_id for t in await lease(shard, 2, group="g")]
            await _check_pages(shard)
        expected = ["first"] + [f"j{i:02}" for i in range(1, N + 1) if i != 9] + ["late"]
        assert leased == expected
        await check_counters(shard)


async def test_a_group_past_its_memory_bound_drops_its_latest_rows(tmp_path) -> None:  # noqa: ANN001
    world = _world(tmp_path)
    async with world.open() as shard:
        await _fill(shard, 4)
        m = shard._mirror
        assert "g" not in m.ready_pages.frontiers and len(m.ready) == 4
        # Each new job sorts first, so each is held; past the bound the latest are dropped
        # where the next operation starts.
        for i in range(3):
            await shard.enqueue(new_job(f"early{i}", priority=0, group="g"))
        await lease(shard, 1, group="other")
        assert m.ready_pages.in_memory["g"] <= PAGED.ready_memory_rows
        assert "g" in m.ready_pages.frontiers and m.ready_per_group["g"] == 7
        await _check_pages(shard)
        leased = [t.job_id for t in await lease(shard, 7, group="g")]
        while len(leased) < 7:
            leased += [t.job_id for t in await lease(shard, 7, group="g")]
        assert leased == ["early0", "early1", "early2", "j01", "j02", "j03", "j04"]
        await check_counters(shard)


async def test_a_reload_after_a_failed_write_pages_afresh(tmp_path) -> None:  # noqa: ANN001
    world = _world(tmp_path)
    async with world.open() as shard:
        await _fill(shard)
    async with world.open() as shard:
        world.faults.rates["disk.write.error"] = 1.0
        with pytest.raises(Unavailable):
            await shard.cancel(T, "j01")  # deletes a held ready row; the write fails
        with pytest.raises(Unavailable):
            await shard.enqueue(new_job("x", priority=0, group="g"))
        world.faults.rates.clear()
        assert await where_is(shard, "j01") == "READY"
        await _check_pages(shard)
        got = [t.job_id for t in await lease(shard, 2, group="g")]
        assert got == ["j01", "j02"]
        await check_counters(shard)


# -- parked requests --------------------------------------------------------------------------

QA = (T, "A")


async def _check_request_pages(shard: JobShard) -> None:
    """Each queue holds exactly its stored requests up to its frontier, and counts them all."""
    m = shard._mirror
    stored = sorted(k for k, _ in await store_items(shard)
                    if k[:1] == bytes((Prefix.CONCURRENCY_REQUEST,)))
    assert [k for k in stored if m.request_lookup(k) is not False] == list(m.requests)
    total = {q: len(ids) for q, ids in (await request_rows(shard)).items()}
    assert m.requests_per_queue == total
    assert shard.statistics().parked_requests == sum(total.values())


async def _fill_queue(shard: JobShard, limit: ConcurrencyLimit, n: int = N) -> None:
    # Enqueued in reverse of their grant order: only priority may decide.
    for i in reversed(range(1, n + 1)):
        await shard.enqueue(limited_job(f"q{i:02}", limit, priority=i))


@pytest.mark.parametrize("kind", ["memory", "leveldb"])
async def test_parked_requests_are_paged_in_grant_order(tmp_path, kind: str) -> None:  # noqa: ANN001
    world = _world(tmp_path, kind)
    one = ConcurrencyLimit("A", 1)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", one, priority=0))
        await _fill_queue(shard, one)
        m = shard._mirror
        assert QA in m.request_pages.frontiers  # the latest requests are on disk only
        await _check_request_pages(shard)
    async with world.open() as shard:  # an open reads one page per queue
        m = shard._mirror
        assert m.request_pages.in_memory == {QA: PAGED.request_page_rows}
        await _check_request_pages(shard)
        ran = []
        for _ in range(N + 1):
            (task,) = await lease(shard, group="g")
            ran.append(task.job_id)
            await shard.report_outcome(report(task, Success()))  # frees the slot: next grant
            await _check_request_pages(shard)
        assert ran == ["holder"] + [f"q{i:02}" for i in range(1, N + 1)]
        assert m.request_pages.frontiers == {} and m.requests_per_queue == {}
        await check_counters(shard)


async def test_a_grant_of_more_than_a_page_reads_on_mid_operation(tmp_path) -> None:  # noqa: ANN001
    world = _world(tmp_path)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", ConcurrencyLimit("A", 1), priority=0))
        await _fill_queue(shard, ConcurrencyLimit("A", 1))
    async with world.open() as shard:
        m = shard._mirror
        assert m.request_pages.in_memory == {QA: 2}
        # A job with a larger max raises the queue's max: one operation grants 9 slots, more
        # than the two requests in memory.
        probes: list[str] = []
        shard._limiter._faults.sometimes = probes.append  # type: ignore[method-assign]
        await shard.enqueue(limited_job("wide", ConcurrencyLimit("A", 10), priority=99))
        assert "shard.limits.requests_paged_mid_operation" in probes
        assert await request_rows(shard) == {QA: ["q10", "q11", "q12", "wide"]}
        assert [await where_is(shard, f"q{i:02}") for i in (1, 9, 10)] == [
            "READY", "READY", "PARKED"]
        await _check_request_pages(shard)
        await check_counters(shard)


async def test_cancelling_a_request_beyond_the_frontier(tmp_path) -> None:  # noqa: ANN001
    world = _world(tmp_path)
    one = ConcurrencyLimit("A", 1)
    async with world.open() as shard:
        await shard.enqueue(limited_job("holder", one, priority=0))
        await _fill_queue(shard, one)
    async with world.open() as shard:
        await shard.cancel(T, "q09")  # its request is beyond the frontier: read from disk
        assert await status_of(shard, "q09") == JobStatus.CANCELLED
        assert shard._mirror.requests_per_queue == {QA: N - 1}
        await _check_request_pages(shard)
        await check_counters(shard)


# -- a paged mirror against an unpaged one ---------------------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 2), st.integers(0, 20)),
        st.tuples(st.just("delete"), st.integers(0, 2), st.integers(0, 20)),
        st.tuples(st.just("take"), st.integers(0, 2), st.integers(1, 3)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, page=st.integers(1, 3), extra=st.integers(0, 2),
       table=st.sampled_from(["ready", "requests"]))
def test_a_paged_mirror_agrees_with_an_unpaged_one(
    ops: list[tuple[str, int, int]], page: int, extra: int, table: str
) -> None:
    async def main() -> None:
        clock, store = _Clock(), _Store()
        paging = GroupPaging(page, 2 * page + extra)
        if table == "ready":
            paged = ShardMirror(clock, None, paging)  # type: ignore[arg-type]
        else:
            paged = ShardMirror(clock, None, None, paging)  # type: ignore[arg-type]
        plain = ShardMirror(clock)  # type: ignore[arg-type]

        def pages(m: ShardMirror):  # noqa: ANN202
            return m.ready_pages if table == "ready" else m.request_pages

        def row_key(t: Task) -> bytes:
            if table == "ready":
                return ready_key(t)
            return request_key(T, t.task_group, t)  # the group names the queue here

        def group_of(m: ShardMirror, k: bytes) -> object:
            return pages(m).group_of(k, pages(m).rows[k])

        def write(k: bytes, v: bytes | None) -> None:
            write_both(plain, paged, store, k, v)

        reopened = False
        for i, (op, g, b) in enumerate(ops):
            name = f"g{g}"
            group = name if table == "ready" else (T, name)
            await paged.page_groups(store)  # type: ignore[arg-type]
            if op == "put":
                t = Task(f"t{b}", T, f"j{b}", 1, name, b % 4, 1_000 + b)
                write(row_key(t), t.encode())
            elif op == "delete":
                rows = [k for k in pages(plain).rows if group_of(plain, k) == group]
                if rows:
                    write(rows[b % len(rows)], None)
            elif op == "take":  # a lease or a grant: the first rows of the group, from memory
                held = [k for k in pages(paged).rows if group_of(paged, k) == group]
                first = [k for k in pages(plain).rows if group_of(plain, k) == group]
                assert held[:b] == first[: min(b, len(held))]
                assert len(held) >= min(page, len(first))  # never short of a page
                for k in held[:b]:
                    write(k, None)
            if not reopened and i == len(ops) // 2:
                reopened = True  # an open pages every group afresh
                await paged.load(store)  # type: ignore[arg-type]
            assert pages(paged).stored == pages(plain).stored
            for k in pages(plain).rows:
                if pages(paged).lookup(k) is not False:
                    assert pages(paged).rows[k] == pages(plain).rows[k]
            assert set(pages(paged).rows) <= set(pages(plain).rows)
        await paged.page_groups(store)  # type: ignore[arg-type]
        for group, n in pages(plain).stored.items():
            assert min(page, n) <= pages(paged).in_memory.get(group, 0) <= paging.memory_rows

    trio.run(main)

"""SiloNode long polls: per-task-group wakeup state is bounded (tests/test_node.py covers lease
rounds)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from silo.node import NodeConfig, open_node
from silo.shard import ShardConfig
from tests.shard.support import World, new_job


@pytest.fixture
def world(tmp_path) -> World:  # noqa: ANN001 - a World is also the test's trio clock
    return World("memory", str(tmp_path))


async def test_wakeup_events_are_dropped_and_capped(world: World, tmp_path) -> None:  # noqa: ANN001
    config = NodeConfig(data_dir=f"{tmp_path}/node", shards=2, long_poll_task_groups_max=3,
                        shard=ShardConfig(lease_ms=30_000))
    leased: dict[str, int] = {}
    async with open_node(world.runtime, config) as node:

        async def poll(group: str) -> None:
            out = await node.lease_any("w1", group, 10, wait_ms=5_000)
            leased[group] = len(out)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(poll, f"group-{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert len(node._ready_events) <= 3
            # A group past the cap is still served (by polling), just not woken at once.
            await node.shard_for_tenant("default").enqueue(new_job(group="group-9"))
            for _ in range(10):
                world.advance(1000)
                await trio.testing.wait_all_tasks_blocked()
        assert leased["group-9"] == 1
        assert all(leased[f"group-{i}"] == 0 for i in range(9))
        # Every poll has ended: no group keeps an event.
        assert node._ready_events == {}

        # Many distinct groups one after another never pile up events either.
        for i in range(50):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll, f"once-{i}")
                await trio.testing.wait_all_tasks_blocked()
                world.advance(6000)
        assert node._ready_events == {}


async def test_a_ready_count_no_lease_can_take_does_not_spin_the_long_poll(
    world: World, tmp_path,  # noqa: ANN001
) -> None:
    """A shard that says it has ready tasks while a lease takes none (a count that disagrees
    with the mirror) makes a long poll retry at once only EMPTY_ROUNDS_RETRIED_MAX times in a
    row, then wait: the call ends at its deadline instead of spinning the node's loop."""
    from silo.node import EMPTY_ROUNDS_RETRIED_MAX

    config = NodeConfig(data_dir=f"{tmp_path}/node", shards=1,
                        shard=ShardConfig(lease_ms=30_000))
    async with open_node(world.runtime, config) as node:
        shard = node.shard_for_tenant("default")
        rounds = 0
        real_round = node._lease_round

        async def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            nonlocal rounds
            rounds += 1
            return await real_round(*args, **kwargs)

        node._lease_round = counted  # type: ignore[method-assign]
        shard.has_ready_tasks = lambda task_group: True  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            result: list[object] = []

            async def poll() -> None:
                result.append(await node.lease_any("w1", "g", 10, wait_ms=2_000))

            nursery.start_soon(poll)
            for _ in range(500):  # a spinning poll would run a round every few of these
                await trio.lowlevel.checkpoint()
            assert rounds == EMPTY_ROUNDS_RETRIED_MAX + 1  # then it waits
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                world.advance(1000)
                await trio.testing.wait_all_tasks_blocked()
        assert result == [[]]
        assert rounds <= 3 * (EMPTY_ROUNDS_RETRIED_MAX + 1)

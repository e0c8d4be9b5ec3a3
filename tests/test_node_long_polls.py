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

"""A node's lease rounds over its shards: one reply byte budget shared by every shard, what was
leased is returned even when a later shard fails, and delivery acks are routed to their
shards."""

from __future__ import annotations

import pytest

from silo.errors import Unavailable
from silo.model import DEFAULT_TENANT as T
from silo.model import WORKER_CRASHED, JobStatus
from silo.node import NodeConfig, SiloNode, open_node
from silo.reply_size import task_reply_bytes
from tests.shard.support import LEASE_MS, WORKER, World, new_job


@pytest.fixture
def memory_world(tmp_path) -> World:  # noqa: ANN001 - also the test's trio clock
    return World("memory", str(tmp_path))


def _config(world: World, **kw: object) -> NodeConfig:
    return NodeConfig(data_dir=world.path, shards=3, shard=world.config, **kw)  # type: ignore[arg-type]


async def _fill(node: SiloNode, per_shard: int, payload: bytes = b"p") -> None:
    for shard_id, shard in sorted(node.shards.items()):
        for i in range(per_shard):
            await shard.enqueue(new_job(f"s{shard_id}-{i}", payload=payload))


async def test_a_failing_shard_does_not_drop_what_other_shards_leased(
    memory_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_node(memory_world.runtime, _config(memory_world)) as node:
        await _fill(node, 2)
        broken = node.shards[sorted(node.shards)[-1]]

        async def unavailable(*args: object, **kwargs: object) -> list:
            raise Unavailable(f"shard {broken.shard_id} is closing")

        monkeypatch.setattr(broken, "lease_tasks", unavailable)
        # One round visits every shard: the failing one is skipped, not fatal, and the tasks
        # leased from the shards before and after it come back.
        leased = await node.lease_any(WORKER, "g", 10)
        assert len(leased) == 4
        assert {x.shard_id for x in leased} == set(node.shards) - {broken.shard_id}
        for shard_id, shard in node.shards.items():
            if shard is not broken:
                assert shard.statistics().leases_held == 2, shard_id


async def test_a_round_where_only_a_failing_shard_has_work_raises(
    memory_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_node(memory_world.runtime, _config(memory_world)) as node:
        broken = node.shards[0]
        await broken.enqueue(new_job("j"))

        async def unavailable(*args: object, **kwargs: object) -> list:
            raise Unavailable("shard 0 is closing")

        monkeypatch.setattr(broken, "lease_tasks", unavailable)
        with pytest.raises(Unavailable):
            await node.lease_any(WORKER, "g", 10)


async def test_the_reply_budget_is_shared_by_every_shard(memory_world: World) -> None:
    payload = b"x" * 10_000
    async with open_node(memory_world.runtime, _config(memory_world)) as node:
        await _fill(node, 4, payload)
        (probe,) = await node.shards[0].lease_tasks(WORKER, "g", 1)
        size = task_reply_bytes(probe)
    budget = 5 * size + size // 2
    async with open_node(memory_world.runtime,
                         _config(memory_world, max_reply_bytes=budget)) as node:
        leased = await node.lease_any(WORKER, "g", 100)
        assert len(leased) == 5
        assert len({x.shard_id for x in leased}) >= 2
        assert sum(task_reply_bytes(x.task) for x in leased) <= budget


async def test_acks_are_routed_to_their_shards_even_without_work(memory_world: World) -> None:
    async with open_node(memory_world.runtime, _config(memory_world)) as node:
        await _fill(node, 1)
        leased = await node.lease_any(WORKER, "g", 10)
        assert len(leased) == 3
        acks = [(x.shard_id, x.task.task_id) for x in leased] + [(99, "t-unknown-shard")]
        assert await node.lease_any(WORKER, "g", 10, acks=acks) == []
        memory_world.advance(LEASE_MS)
        for shard in node.shards.values():
            await shard.reap_expired()
        for x in leased:
            view = await node.shards[x.shard_id].get_job(T, x.task.job_id)
            assert view.state.status == JobStatus.FAILED  # acked, so a crash, not undelivered
            result = await node.shards[x.shard_id].get_result(T, x.task.job_id)
            assert result.error_code == WORKER_CRASHED

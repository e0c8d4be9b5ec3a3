"""A shard split on a real cluster (one etcd, three ``silo serve --coordination etcd``
processes on a shared data root) under enqueue and worker load: ``siloctl shard split`` sent to
a node that does not own the parent is routed to the owner; no acknowledged job is lost and
every one completes exactly once; ``siloctl cluster info`` shows both children with their
ranges and owners; the children's cleanup finishes. Skipped without the etcd binary."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from silo.client import SiloClient
from tests.cluster.etcd_process import ETCD_BINARY
from tests.integration import test_cluster
from tests.integration.support import wait_until
from tests.integration.test_cluster import (
    CLIENT_RETRY,
    SHARDS,
    TENANTS,
    Load,
    placement,
    siloctl,
)

etcd = test_cluster.etcd
make_node = test_cluster.make_node
"""The cluster test's fixtures: one etcd per module, nodes on a shared data root."""

pytestmark = pytest.mark.skipif(ETCD_BINARY is None, reason="the etcd binary is not installed")


async def test_split_under_load_on_a_three_node_cluster(make_node: Any) -> None:
    nodes = [make_node(f"n{i}") for i in range(3)]
    with trio.fail_after(58):
        for n in nodes:
            await n.start()
        async with SiloClient.connect(*(n.address for n in nodes), retry=CLIENT_RETRY) as client:
            await wait_until(lambda: _placed(client, SHARDS), timeout=10, what="3 nodes placed")
            parent = await client.shard_for(TENANTS[0])
            before = siloctl(nodes[0].address, "cluster", "info")
            owner = next(s["owner_node"] for s in before["shards"] if s["id"] == parent)
            other = next(n for n in nodes if n.node_id != owner)
            load = Load(client)
            async with trio.open_nursery() as nursery:
                for w in load.workers:
                    nursery.start_soon(w.run)
                async with trio.open_nursery() as enq:
                    for k in range(3):
                        enq.start_soon(load.enqueue, k * 10_000, 150)
                    await wait_until(lambda: len(load.runs) >= 60, timeout=20,
                                     what="60 jobs run")
                    started = time.monotonic()
                    split = await trio.to_thread.run_sync(
                        siloctl, other.address, "shard", "split", str(parent))
                    split_s = time.monotonic() - started
                assert split["parent"] == parent and split["phase"] == "children_open"
                children = {c["shard"]: c for c in split["children"]}
                await wait_until(lambda: _placed(client, SHARDS + 1), timeout=10,
                                 what="every shard, children included, placed")
                summary = await load.check_all_succeeded_once(timeout=25)
                for w in load.workers:
                    w.stop(2)
            info = siloctl(nodes[1].address, "cluster", "info")
            shown = {s["id"]: s for s in info["shards"]}
            assert parent not in shown and len(shown) == SHARDS + 1
            live = {n.node_id for n in nodes}
            for child, c in children.items():
                assert (shown[child]["range_start"], shown[child]["range_end"]) == (
                    c["range_start"], c["range_end"])
                assert shown[child]["owner_node"] in live
            cleanup_started = time.monotonic()
            status = await _cleanup_done(nodes[2].address, parent)
            cleanup_s = time.monotonic() - cleanup_started
            print(f"split (siloctl round trip, routed from {other.node_id} to {owner}): "
                  f"{split_s:.2f}s, requested to children open in the record "
                  f"{split['changed_at_ms'] - split['requested_at_ms']} ms; cleanup finished "
                  f"{cleanup_s:.2f}s after the checks; "
                  f"children {sorted(children)} on "
                  f"{[shown[c]['owner_node'] for c in sorted(children)]}; {summary}; "
                  f"unknown enqueues {len(load.unknown)}; "
                  f"keys deleted {[c['keys_deleted'] for c in status['children']]}")


async def _cleanup_done(address: str, parent: int) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            got = await trio.to_thread.run_sync(siloctl, address, "shard", "split-status",
                                                str(parent))
            (status,) = got["splits"]
            if status["phase"] == "cleanup_done":
                assert all(c["cleanup_stage"] == "done" for c in status["children"]), status
                return status
            await trio.sleep(0.2)


async def _placed(client: SiloClient, shards: int) -> bool:
    p = await placement(client)
    return len(p) == 3 and sum(len(v) for v in p.values()) == shards

"""Split benchmark: split a LevelDB shard holding N jobs on the real runtime and time it.

A node with one shard (coordination ``none``, synced writes) is filled with N jobs spread over
many tenants (batches of 100 per tenant); then ``Splitter.request`` splits it at the median
tenant hash. Reported: the split time (pause -> children serving), the time until both
children's cleanup is done, the rows the cleanup deleted and examined, and the cleanup rate in
rows deleted per second of cleanup time (both children sweep concurrently).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import trio

from silo.cluster.split import SplitPhase
from silo.model import NewJob
from silo.node import NodeConfig, open_node
from silo.runtime import real_runtime
from silo.shard import ShardConfig

ENQUEUE_BATCH = 100


@dataclass
class SplitResult:
    jobs: int
    tenants: int
    batch_keys: int
    fill_s: float
    split_s: float
    cleanup_s: float
    rows_deleted: int
    rows_examined: int
    linked_files: int
    copied_files: int

    @property
    def cleanup_rows_per_s(self) -> float:
        return self.rows_deleted / self.cleanup_s if self.cleanup_s > 0 else 0.0


async def _run(jobs: int, tenants: int, batch_keys: int, data_dir: str) -> SplitResult:
    rt = real_runtime()
    config = NodeConfig(data_dir=data_dir, shards=1,
                        shard=ShardConfig(lease_ms=60_000, cleanup_batch_keys=batch_keys))
    async with open_node(rt, config) as node:
        shard = node.shards[0]
        t0 = time.perf_counter()
        per_tenant = max(1, jobs // tenants)
        done = 0
        i = 0
        while done < jobs:
            tenant = f"tenant-{i % tenants:05d}"
            n = min(ENQUEUE_BATCH, jobs - done, per_tenant)
            await shard.enqueue_batch([
                NewJob(task_group="bench", payload=b"x" * 64, tenant=tenant,
                       job_id=f"j{done + k:08d}", metadata={"k": str(k)})
                for k in range(n)
            ])
            done += n
            i += 1
        fill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        record = await node.splitter.request(0)
        split_s = time.perf_counter() - t1
        files = _files(node.shard_path(record.left))
        while node.splitter.records[0].phase != SplitPhase.CLEANUP_DONE:
            await trio.sleep(0.01)
        cleanup_s = time.perf_counter() - t1 - split_s
        markers = [node.shards[c].split_marker() for c in (record.left, record.right)]
        return SplitResult(
            jobs, tenants, batch_keys, fill_s, split_s, cleanup_s,
            sum(m.deleted for m in markers if m is not None),
            sum(m.examined for m in markers if m is not None), *files,
        )


def _files(path: str) -> tuple[int, int]:
    linked = copied = 0
    for name in os.listdir(path):
        st = os.stat(os.path.join(path, name))
        if st.st_nlink > 1:
            linked += 1
        else:
            copied += 1
    return linked, copied


def run_split(jobs: int = 100_000, tenants: int = 1000, batch_keys: int = 500) -> SplitResult:
    root = tempfile.mkdtemp(prefix="silo-bench-split-")
    try:
        return trio.run(_run, jobs, tenants, batch_keys, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_split(r: SplitResult) -> None:
    print(f"split of a shard of {r.jobs} jobs ({r.tenants} tenants; filled in {r.fill_s:.1f} s)")
    print(f"  split (pause -> both children serving): {r.split_s * 1000:.0f} ms "
          f"({r.linked_files} table files hard-linked, {r.copied_files} copied per child)")
    print(f"  cleanup (both children, batches of {r.batch_keys} rows): {r.cleanup_s:.2f} s, "
          f"{r.rows_deleted} rows deleted of {r.rows_examined} examined")
    print(f"  cleanup rate: {r.cleanup_rows_per_s:,.0f} rows deleted/s")


__all__ = ["SplitResult", "print_split", "run_split"]

"""The registry of forced rare paths (BUGGIFY points) and coverage probes.

A *BUGGIFY point* names a place in product code that may take a legal but rare path (answer a
lease with fewer tasks than asked, wake a long poll early, delay a heartbeat). Code asks
``faults.buggify("node.lease.fewer_tasks")``: in production the answer is always False; under the
simulator a run enables a seed-chosen subset of points, each firing with a seeded probability.

A *probe* (``faults.sometimes("lease.reply.split_by_size")``) marks that a path was reached; it
costs one method call in production and does nothing there. The simulator counts probes per run
and a sweep can require listed probes to have fired.

Every point and probe is listed here, with what it means; asking for an unlisted name raises
under the simulator (so a typo cannot silently disable a point).
"""

from __future__ import annotations

BUGGIFY_POINTS: dict[str, str] = {
    "node.lease.fewer_tasks": "a lease round asks each shard for fewer tasks than were wanted",
    "node.lease.wake_early": "a long poll wakes before any task is ready (spurious wakeup)",
    "worker.heartbeat.delay": "a worker heartbeat is sent late (up to half a lease)",
    "worker.report.delay": "a worker outcome report batch is sent 1 s late",
    "disk.write.delay": "a store write stays in flight longer than the disk's latency",
    "shard.commit.split_group": "the writer commits a queued group as two writes",
    "shard.lease.batch_one": "a shard lease hands out at most one task",
    "shard.reap.batch_one": "the reaper reaps one lease per batch",
    "shard.loops.wake_early": "the timer and reaper loops wake before anything is due",
    "shard.writer.delay": "the writer waits 5 ms before taking a group (bigger groups)",
}
"""BUGGIFY points in product code (and the simulated disk), by name."""

PLANNED_SHARD_POINTS: dict[str, str] = {
    "shard.grants.wake_early": "the limiter's grant and floating-refresh paths run early",
}
"""Points not placed yet (registered here once placed in code)."""

PROBES: dict[str, str] = {
    "node.lease.long_poll_woken": "a waiting lease was woken by a task becoming ready",
    "node.lease.across_shards": "one lease reply carried tasks from more than one shard",
    "node.lease.empty_after_wait": "a long poll ended with no tasks",
    "worker.heartbeat.lease_lost": "a worker heartbeat found its lease gone and abandoned it",
    "worker.heartbeat.cancel_seen": "a worker heartbeat learnt that its job was cancelled",
    "worker.report.refused": "a report was refused for one task (not owned, or gone)",
    "worker.handler.failed": "a handler raised (any exception but Fail and Cancel)",
    "shard.lease.reply_split_by_size": "a lease stopped picking: the next task would not fit in "
                                       "the reply's byte budget (it goes in a later reply)",
    "shard.lease.undelivered_requeued": "an unacknowledged lease expired and its job went back "
                                        "to the queue (UNDELIVERED, no retry charged)",
    "shard.lease.released_requeued": "a worker handed back a lease it had not started and its "
                                     "job went back to the queue (no retry charged)",
    "worker.prefetch.released": "a stopping worker handed back prefetched tasks it never "
                                "started",
    "shard.poison.job_failed": "a poison item's job ended FAILED INTERNAL_ERROR",
    "shard.limits.regrant": "a parked request was granted a slot that a release freed",
    "shard.limits.requests_paged_mid_operation": "a grant took every parked request of its "
                                                 "queue in memory and read the next page",
}
"""Coverage probes placed in product code, by name."""


def known_point(name: str) -> bool:
    return name in BUGGIFY_POINTS


def known_probe(name: str) -> bool:
    return name in PROBES

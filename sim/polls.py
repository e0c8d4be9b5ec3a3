"""Idle polling: a worker with nothing to do must not ask for work in a busy loop.

The worker SDK's contract (DESIGN §5, ``silo.client.worker``): a LeaseTasks call waits up to
``lease_wait_ms`` on the server; with a wait below 1 s an empty reply backs off (10 ms doubling
to 1 s) before the next call. So a worker's empty replies stay near one per second of idle time
(plus a few after each start and after each non-empty reply, which resets the backoff). The
simulator counts every LeaseTasks answer per worker id and fails the run when the empty ones
exceed :func:`empty_reply_bound`.
"""

from __future__ import annotations

from dataclasses import dataclass

from silo.client.worker import EMPTY_POLL_WAIT_MS, empty_reply_backoff_s
from silo.wire import pb


def backoff_ramp() -> int:
    """How many empty replies one lease loop can get, counting from a reset of its backoff (a
    reply with tasks, or the loop's start), before its sleeps reach :data:`EMPTY_POLL_WAIT_MS`.

    The ``k``-th empty reply after a reset comes at least ``sum(empty_reply_backoff_s(i) for i
    in 1..k-1)`` after it (server waits and latency only add time). The sleeps grow 10, 20,
    ..., 640 ms (7 replies, 1.27 s in all) and then stay at 1 s, so within ``g`` seconds of a
    reset a loop gets at most ``ramp + g`` empty replies: the ramp, then at most one per second
    (the first of those not before 1.27 s). A worker that gets a task every few hundred ms (a
    rate-limited job retried at once, say) thus legally sees 3-5 empty replies per task.
    """
    plateau_s = EMPTY_POLL_WAIT_MS / 1000
    ramp, ramp_s = 0, 0.0
    while empty_reply_backoff_s(ramp + 1) < plateau_s:
        ramp += 1
        ramp_s += empty_reply_backoff_s(ramp)
    assert ramp_s >= plateau_s, "the proof above needs the ramp to last a plateau sleep"
    return ramp


EMPTY_PER_S = 3.0
"""Empty replies allowed per simulated second (the SDK's backoff gives one per lease loop, and
a worker runs one loop per node address it leases from)."""
EMPTY_PER_BUSY = backoff_ramp()
"""Empty replies allowed per non-empty one: a reply with tasks resets the backoff, and the
ramp that follows is :func:`backoff_ramp` replies long. (A bound of 2 per reply failed a legal
run: ``priority --seed 250`` in tests/sim/test_regressions.py.)"""
EMPTY_SLACK = 30
"""Empty replies allowed per worker id besides (the backoff's first doublings)."""
SMALL_REPLY_BYTES = 200
"""Replies this small are parsed to see whether they carry a task (larger ones always do)."""


def empty_reply_bound(sim_s: float, busy: int) -> int:
    return int(EMPTY_PER_S * sim_s) + EMPTY_PER_BUSY * busy + EMPTY_SLACK


@dataclass
class PollCounts:
    empty: int = 0
    busy: int = 0


class IdlePolls:
    def __init__(self) -> None:
        self.by_worker: dict[str, PollCounts] = {}

    def on_request(self, request: bytes, node: str = "") -> str:
        """The poller a LeaseTasks request counts for: its worker id, and in a cluster the
        node it asks (a worker runs one lease loop per node that owns shards)."""
        worker_id = pb.LeaseTasksRequest.parse(request).worker_id
        return f"{worker_id} (asking {node})" if node else worker_id

    def on_reply(self, worker_id: str, response: bytes | None) -> None:
        if response is None:
            return
        counts = self.by_worker.setdefault(worker_id, PollCounts())
        if len(response) < SMALL_REPLY_BYTES and not pb.LeaseTasksResponse.parse(response).tasks:
            counts.empty += 1
        else:
            counts.busy += 1

    def busy_loop(self, sim_s: float) -> str | None:
        """A description of the first worker over its bound, or None."""
        for worker_id, c in sorted(self.by_worker.items()):
            bound = empty_reply_bound(sim_s, c.busy)
            if c.empty > bound:
                return (f"worker {worker_id} got {c.empty} empty LeaseTasks replies (and {c.busy} "
                        f"with tasks) in {sim_s:.1f} simulated seconds; at most {bound} are "
                        f"expected of an idle worker that backs off")
        return None

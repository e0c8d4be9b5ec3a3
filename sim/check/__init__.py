"""Invariant checkers, fed by the durable event stream while the run goes on.

The model here is built only from what the shard reports as durable (events), from what clients
were actually told (acknowledgements), from what the server answered on heartbeats, and, after a
crash, from the disk's durable image (a write in flight at the crash may survive without its
events ever being emitted). Numbers are DESIGN §7's invariants:

1. no task is leased twice at once; a job never has two live leases (a leased task must not stay
   in the queue);
2. a concurrency queue never has more holders than its max at the time of a grant; a slot is
   granted to a task at most once until released, and only a granted slot is released (fed by
   ``slot_granted`` / ``slot_released``, re-synced from the holder rows after a crash); the
   audit finds no holder row of a job that is terminal or of another attempt;
3. only legal status transitions; RUNNING iff exactly one running attempt;
4. attempts never leave a terminal state; attempt numbers strictly increase per job; an
   undelivered attempt (a lease that expired unacknowledged) re-queues the job without charging
   its retry budget, at most ``MAX_UNDELIVERED`` times per run;
5. terminal jobs hold no lease and no queued task;
6. no acknowledged enqueue is ever lost (and none is acknowledged before it is durable); no
   enqueue call creates its job twice (a retry arriving after the job its first try created was
   deleted must not re-create it);
7. liveness: checked by the simulator (every job terminal within the bound after healing);
8. an expired lease is reaped (within a slack); a heartbeat of a job flagged cancelled answers
   ``cancelled=True``;
9. a lease never hands out a task while a due task of the same shard and task group with a
   higher priority (lower number) waits (a task parked on a concurrency queue, or in the timer
   index with limits left to acquire, e.g. waiting for a reserved rate token, is not due);
11. splits lose no job (a parent never writes once cloned; every job is in the child owning its
    tenant when the children open); committed maps cover the space without overlap; a cleanup
    batch never deletes rows of a tenant inside the child's range (:mod:`sim.check.splits`);
12. counters equal a recount (final audit and after every crash);
13. only a ready task is leased, and never before its due time on the node's monotonic clock
    (start time, retry backoff, rate-token wait; checked on ``task_leased`` when the model knows
    the node's deadline exactly: see :attr:`Queued.exact_due`); no rate bucket grants more than
    ``limit`` tokens in any window of ``per_ms`` (fed by ``token_taken``, at each token's
    reserved time; the audit checks the reservation rows against the jobs waiting for tokens);
14. the retry budget is charged only for delivered attempts: ``status_changed`` carries the
    shard's ``run_attempts``, which must equal leases minus undelivered ones this run, a job
    never ends FAILED while its budget lasts, and a lease of an SDK worker expires
    ``WORKER_CRASHED`` only if its handler started (a task held unstarted, prefetched, is not
    delivered; the expiry after ``MAX_UNDELIVERED`` undelivered ones excepted);
15. every outcome a worker's handler computed while its lease was live is, after the workers'
    clean stop, the recorded state of its attempt, or the SDK dropped its report with a reason
    (fed by :class:`sim.observed_worker.ObservedWorker`; a crashed worker's outcomes die with
    it);
16. no wait-for cycle among parked requests (the durable images, see
    :func:`sim.audit.wait_for_cycle`); holder rows of ended tasks are invariant 2's audit;
17. no poison item (``poison_item`` event, or the shard's poison counter): the simulator
    injects no corrupt records; the run fails with exit 3;
fencing. a heartbeat or report from a worker that does not own the lease is refused and
    causes no lease event (``by_worker_id`` on ``lease_extended`` / ``lease_ended``, and the
    answers the server gave, against the owner named by ``task_leased``).

Checkers never raise into the code under test: they hand a :class:`Violation` to ``report``.
"""

from __future__ import annotations

from sim.check.durable import DurableChecks
from sim.check.enqueues import EnqueueChecks
from sim.check.jobs import JobChecks
from sim.check.leases import LeaseChecks
from sim.check.limits import LimitChecks
from sim.check.model import (
    INVARIANTS,
    REAP_SLACK_S,
    STEP_SETTLE_S,
    JobModel,
    LeaseModel,
    LeaseOwner,
    Queued,
    Violation,
    reachable,
)
from sim.check.results import ResultChecks
from sim.check.splits import SplitChecks
from sim.invariants import Invariant


class Checker(SplitChecks, JobChecks, LeaseChecks, LimitChecks, EnqueueChecks, ResultChecks,
              DurableChecks):
    """The whole checker: one class per invariant family (see the modules of this package),
    sharing the state of :class:`sim.check.base.CheckerBase`."""


__all__ = [
    "INVARIANTS",
    "REAP_SLACK_S",
    "STEP_SETTLE_S",
    "Checker",
    "Invariant",
    "JobModel",
    "LeaseModel",
    "LeaseOwner",
    "Queued",
    "Violation",
    "reachable",
]

"""Reading a shard's durable image straight off the simulated disk, and auditing it.

The audit checks what must hold in *every* durable state of a shard, whatever the history:
each job has its info and status rows (and no attempt high-water row, which only a deleted id
has); a SCHEDULED job has exactly its one queued task; a RUNNING job has exactly one lease and one
RUNNING attempt; a job counts at most ``MAX_UNDELIVERED`` undelivered attempts since its
(re)start, each stored as UNDELIVERED; a terminal job holds no lease, no queued task and no
RUNNING attempt; leases and their expiry index agree; the stored counters equal a recount of the
status rows; every concurrency holder row belongs to the queued or running attempt of a
non-terminal job (a row left behind would hold its slot forever: invariant 2), a queue whose max
never changed holds at most its max, and idle per-key state keeps no row (a queue with no
holder, request or pending refresh; a counter at zero); every job has its request fingerprint
row and every fingerprint row its job; every job waiting for a rate token has its reservation
row at its due time, no reservation is held at another time by a job waiting for one, and no
bucket's reservations put more than its limit in a window of its period (invariant 13).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from silo import keys
from silo.keys import Prefix
from silo.model import (
    MAX_UNDELIVERED,
    PARKED,
    READY,
    TIMER,
    Attempt,
    AttemptHighWater,
    AttemptState,
    JobFingerprint,
    JobInfo,
    JobState,
    JobStatus,
    Lease,
    QueueState,
    RateLimit,
    RateReservation,
    Task,
    decode_int,
)
from silo.shard.mirror import COUNTER_PREFIX
from silo.shard.tables import JOBS_TERMINAL, JOBS_TOTAL, status_counter
from sim.invariants import Invariant

JobKey = tuple[str, str]


QUEUE_KINDS = {Prefix.READY: "ready", Prefix.TIMER: "timer", Prefix.CONCURRENCY_REQUEST: "request"}
WHERE_KINDS = {READY: "ready", TIMER: "timer", PARKED: "request"}


@dataclass
class ShardImage:
    infos: dict[JobKey, JobInfo] = field(default_factory=dict)
    states: dict[JobKey, JobState] = field(default_factory=dict)
    queued: list[tuple[str, Task]] = field(default_factory=list)  # (kind, task); kinds below
    leases: dict[str, Lease] = field(default_factory=dict)
    expiries: list[tuple[int, str]] = field(default_factory=list)
    attempts: dict[JobKey, dict[int, Attempt]] = field(default_factory=dict)
    cancels: dict[JobKey, int] = field(default_factory=dict)
    counters: dict[bytes, int] = field(default_factory=dict)
    holders: dict[tuple[str, str], dict[str, tuple[str, int]]] = field(default_factory=dict)
    """(tenant, queue) -> holder task id -> (job id, attempt)."""
    queues: dict[tuple[str, str], QueueState] = field(default_factory=dict)
    fingerprints: dict[JobKey, JobFingerprint] = field(default_factory=dict)
    high_water: dict[JobKey, AttemptHighWater] = field(default_factory=dict)
    """Deleted (tenant, job id) -> the highest attempt number it used."""
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """(tenant, queue) -> parked requests."""
    parked: dict[tuple[str, str], list[Task]] = field(default_factory=dict)
    """(tenant, queue) -> the tasks parked on it, in key order."""
    reservations: dict[tuple[str, str, str], list[tuple[int, str, int, RateReservation]]] = (
        field(default_factory=dict)
    )
    """(tenant, name, key) -> its rate reservations (slot, job id, attempt, limit), in order."""

    @classmethod
    def parse(cls, items: list[tuple[bytes, bytes]]) -> ShardImage:
        img = cls()
        for k, v in items:
            p = k[0]
            if p == Prefix.JOB:
                _, (t, j) = keys.parse(k)
                img.infos[(str(t), str(j))] = JobInfo.decode(k, v)
            elif p == Prefix.STATUS:
                _, (t, j) = keys.parse(k)
                img.states[(str(t), str(j))] = JobState.decode(k, v)
            elif p in (Prefix.READY, Prefix.TIMER, Prefix.CONCURRENCY_REQUEST):
                task = Task.decode(k, v)
                if p == Prefix.CONCURRENCY_REQUEST:
                    _, (t, q, *_rest) = keys.parse(k)
                    img.requests[(str(t), str(q))] = img.requests.get((str(t), str(q)), 0) + 1
                    img.parked.setdefault((str(t), str(q)), []).append(task)
                if not task.is_refresh:  # floating-limit refresh tasks belong to no job
                    img.queued.append((QUEUE_KINDS[p], task))
            elif p == Prefix.LEASE:
                lease = Lease.decode(k, v)
                img.leases[lease.task_id] = lease
            elif p == Prefix.LEASE_EXPIRY:
                _, (expiry, task_id) = keys.parse(k)
                img.expiries.append((int(expiry), str(task_id)))
            elif p == Prefix.ATTEMPT:
                _, (t, j, _a) = keys.parse(k)
                a = Attempt.decode(k, v)
                img.attempts.setdefault((str(t), str(j)), {})[a.attempt] = a
            elif p == Prefix.CANCEL:
                _, (t, j) = keys.parse(k)
                img.cancels[(str(t), str(j))] = decode_int(k, v)
            elif p == Prefix.CONCURRENCY_HOLDER:
                _, (t, q, tid) = keys.parse(k)
                _at, job_id, attempt = msgpack.unpackb(v)
                img.holders.setdefault((str(t), str(q)), {})[str(tid)] = (str(job_id),
                                                                         int(attempt))
            elif p == Prefix.FLOATING_LIMIT:
                _, (t, q) = keys.parse(k)
                img.queues[(str(t), str(q))] = QueueState.decode(k, v)
            elif p == Prefix.RATE_RESERVATION:
                _, (t, n, b, slot, j, a) = keys.parse(k)
                img.reservations.setdefault((str(t), str(n), str(b)), []).append(
                    (int(slot), str(j), int(a), RateReservation.decode(k, v))
                )
            elif p == Prefix.JOB_FINGERPRINT:
                _, (t, j) = keys.parse(k)
                img.fingerprints[(str(t), str(j))] = JobFingerprint.decode(k, v)
            elif p == Prefix.ATTEMPT_HIGH_WATER:
                _, (t, j) = keys.parse(k)
                img.high_water[(str(t), str(j))] = AttemptHighWater.decode(k, v)
            elif p == Prefix.META and k.startswith(COUNTER_PREFIX):
                img.counters[k] = decode_int(k, v)
        return img

    def recount(self) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for (tenant, _), st in self.states.items():
            out[JOBS_TOTAL] = out.get(JOBS_TOTAL, 0) + 1
            if st.status.terminal:
                out[JOBS_TERMINAL] = out.get(JOBS_TERMINAL, 0) + 1
            sk = status_counter(tenant, st.status)
            out[sk] = out.get(sk, 0) + 1
        return dict(sorted(out.items()))

    def stored_counters(self) -> dict[bytes, int]:
        return {k: v for k, v in sorted(self.counters.items()) if v}


def in_range_rows(
    items: list[tuple[bytes, bytes]], shard_id: int
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The rows of a split child's image that its cleanup keeps (``items`` unchanged for a
    shard that is not a split child or whose cleanup is done), and whether cleanup is still
    pending (its stored counters then still count the parent's jobs: the caller compares the
    recount only)."""
    from silo.cluster.split import NeedsLease, key_owner
    from silo.shard.cleanup import SPLIT_MARKER, SplitMarker

    rows = dict(items)
    raw = rows.get(SPLIT_MARKER)
    if raw is None:
        return items, False
    marker = SplitMarker.decode(raw)
    if marker.done:
        return items, False
    rng = marker.range_of(shard_id)
    out = []
    for k, v in items:
        owner = key_owner(k, v)
        if isinstance(owner, NeedsLease):
            lk = keys.key(Prefix.LEASE, owner.task_id)
            owner = key_owner(lk, rows[lk]) if lk in rows else None
        if owner is not None and not rng.contains(_tenant_hash(owner)):
            continue
        if k.startswith(COUNTER_PREFIX):
            continue
        out.append((k, v))
    return out, True


def _tenant_hash(tenant: str) -> int:
    from silo.cluster.shard_map import tenant_hash

    return tenant_hash(tenant)


def image_of(items: list[tuple[bytes, bytes]], shard_id: int) -> ShardImage:
    """The image of a shard as its node serves it: a split child's rows outside its range (not
    yet deleted by its cleanup) left out, with counters equal to the recount meanwhile."""
    rows, pending = in_range_rows(items, shard_id)
    img = ShardImage.parse(rows)
    if pending:
        img.counters = dict(img.recount())
    return img


def counter_name(k: bytes) -> str:
    _, parts = keys.parse(k)
    names = [str(p) for p in parts[1:]]
    if len(names) == 3 and names[0] == "status":
        names[2] = JobStatus(int(names[2])).name
    return "/".join(names)


def diff_counters(stored: dict[bytes, int], recount: dict[bytes, int]) -> list[str]:
    out = []
    for k in sorted(set(stored) | set(recount)):
        if stored.get(k, 0) != recount.get(k, 0):
            out.append(f"{counter_name(k)}: stored {stored.get(k, 0)}, recount {recount.get(k, 0)}")
    return out


def wait_for_cycle(img: ShardImage) -> list[str] | None:
    """Invariant 16: a cycle in the wait-for graph of parked requests (job J waits for job K
    when J is parked on a queue a slot of which K holds), as ``["tenant/job holds ... waits
    on ...", ...]``; None when there is none."""
    holders_of: dict[tuple[str, str], list[str]] = {}
    for (tenant, queue), rows in sorted(img.holders.items()):
        holders_of[(tenant, queue)] = sorted({job for job, _ in rows.values()})
    waits: dict[JobKey, list[tuple[str, JobKey]]] = {}
    for (tenant, queue), tasks in sorted(img.parked.items()):
        for task in tasks:
            if task.is_refresh:
                continue
            for job in holders_of.get((tenant, queue), []):
                if job != task.job_id:
                    waits.setdefault((tenant, task.job_id), []).append((queue, (tenant, job)))
    done: set[JobKey] = set()
    for start in sorted(waits):
        # Iterative DFS; ``path`` is the current chain of (job, queue it waits on).
        path: list[tuple[JobKey, str]] = []
        on_path: dict[JobKey, int] = {}
        stack: list[tuple[JobKey, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if node in done:
                    continue
                on_path[node] = len(path)
                path.append((node, ""))
            edges = waits.get(node, [])
            if i < len(edges):
                stack.append((node, i + 1))
                queue, nxt = edges[i]
                path[-1] = (node, queue)
                if nxt in on_path:
                    cycle = path[on_path[nxt]:]
                    return [f"{t}/{j} waits on queue {q!r}" for (t, j), q in cycle]
                if nxt not in done:
                    stack.append((nxt, 0))
            else:
                done.add(node)
                del on_path[node]
                path.pop()
    return None


def audit_holders(
    img: ShardImage, where: str, max_changed: frozenset[tuple[str, str]] = frozenset()
) -> list[tuple[int, str]]:
    """Invariant 2 on disk: a holder row must be the slot of the queued or running attempt of
    a non-terminal job; a queue holds at most its max unless that max was lowered (floating
    queues, and queues in ``max_changed``, are exempt from the count)."""
    problems: list[tuple[int, str]] = []
    for (tenant, queue), rows in sorted(img.holders.items()):
        for tid, (job_id, attempt) in sorted(rows.items()):
            st = img.states.get((tenant, job_id))
            current = None
            if st is not None and st.status == JobStatus.RUNNING:
                current = st.lease_task_id
            elif st is not None and st.status == JobStatus.SCHEDULED and st.task is not None:
                current = st.task[3]
            if current != tid:
                what = "missing" if st is None else st.status.name
                problems.append((Invariant.SLOT_LIMIT,
                                 f"{where}: holder row left behind in queue {queue!r} of "
                                    f"tenant {tenant!r}: task {tid} (attempt {attempt}) of "
                                    f"{what} job {job_id!r}, whose current task is {current}"))
        qs = img.queues.get((tenant, queue))
        if qs is None:
            problems.append((Invariant.SLOT_LIMIT,
                             f"{where}: holders {sorted(rows)} in unknown queue {queue!r}"))
        elif (not qs.floating and (tenant, queue) not in max_changed
              and len(rows) > qs.max_concurrency):
            problems.append((Invariant.SLOT_LIMIT,
                             f"{where}: queue {queue!r} of tenant {tenant!r} has "
                                f"{len(rows)} holders, max {qs.max_concurrency}"))
    return problems


def audit_idle_rows(img: ShardImage, where: str) -> list[tuple[int, str]]:
    """Per-key state is deleted once idle: no queue row without a holder, a parked request or a
    pending refresh, and no counter row holding zero (either reads the same as no row)."""
    problems: list[tuple[int, str]] = []
    for (tenant, queue), qs in sorted(img.queues.items()):
        q = (tenant, queue)
        if qs.refresh_task_id is None and not img.holders.get(q) and not img.requests.get(q):
            problems.append((Invariant.COUNTERS,
                             f"{where}: idle queue {queue!r} of tenant {tenant!r} (no "
                                 f"holder, request or refresh) keeps its state row"))
    for k, v in sorted(img.counters.items()):
        if v == 0:
            problems.append((Invariant.COUNTERS,
                             f"{where}: counter {counter_name(k)} is stored as zero"))
    return problems


def audit_reservations(img: ShardImage, where: str) -> list[tuple[int, str]]:
    """Invariant 13 on disk: the reservation index agrees with the jobs waiting for tokens (a
    waiting job without its row could see its slot granted twice; a row at another time than
    its job's timer is a token given twice), and no bucket's reservations exceed its rate."""
    problems: list[tuple[int, str]] = []
    waiting: dict[tuple[str, str, str, str], tuple[int, int]] = {}
    for (tenant, job_id), st in sorted(img.states.items()):
        info = img.infos.get((tenant, job_id))
        if (info is None or st.status != JobStatus.SCHEDULED or st.task is None
                or st.task[2] != TIMER or st.held == 0):
            continue
        limit = info.limits[st.held - 1]
        if isinstance(limit, RateLimit):
            waiting[(tenant, limit.name, limit.key, job_id)] = (st.task[0], st.task[1])
    have: set[tuple[str, str, str, str, int, int]] = set()
    for (tenant, name, bucket), rows in sorted(img.reservations.items()):
        for slot, job_id, attempt, _ in rows:
            have.add((tenant, name, bucket, job_id, attempt, slot))
            w = waiting.get((tenant, name, bucket, job_id))
            if w is not None and w[0] == attempt and w[1] != slot:
                problems.append((Invariant.NOT_BEFORE_DUE,
                                 f"{where}: job {(tenant, job_id)} attempt {attempt} holds a "
                                 f"reservation of rate bucket {name}/{bucket} at {slot} but "
                                 f"waits for {w[1]}"))
        for i, (slot, _, _, r) in enumerate(rows):
            if i + r.limit < len(rows) and rows[i + r.limit][0] - slot < r.per_ms:
                problems.append((Invariant.NOT_BEFORE_DUE,
                                 f"{where}: rate bucket {name}/{bucket} of tenant "
                                 f"{tenant!r} grants {r.limit + 1} tokens in "
                                 f"[{slot}, {rows[i + r.limit][0]}], within {r.per_ms} ms "
                                 f"(limit {r.limit})"))
                break
    for (tenant, name, bucket, job_id), (attempt, due) in sorted(waiting.items()):
        if (tenant, name, bucket, job_id, attempt, due) not in have:
            problems.append((Invariant.NOT_BEFORE_DUE,
                             f"{where}: job {(tenant, job_id)} attempt {attempt} waits for a "
                             f"token of rate bucket {name}/{bucket} at {due} but has no "
                             f"reservation row there"))
    return problems


def audit_image(
    img: ShardImage, where: str, max_changed: frozenset[tuple[str, str]] = frozenset()
) -> list[tuple[int, str]]:
    """Problems found in one durable shard image, as ``(invariant, message)``."""
    problems: list[tuple[int, str]] = audit_holders(img, where, max_changed)
    cycle = wait_for_cycle(img)
    if cycle is not None:
        problems.insert(0, (Invariant.NO_WAIT_CYCLE,
                            f"{where}: wait-for cycle among parked requests (each holds a slot "
                            f"the next waits for): " + "; ".join(cycle)))
    problems += audit_idle_rows(img, where)
    problems += audit_reservations(img, where)
    for key in sorted(set(img.infos) ^ set(img.states)):
        problems.append((Invariant.TRANSITIONS,
                         f"{where}: job {key} has only one of its info/status rows"))
    queued: dict[JobKey, list[tuple[str, Task]]] = {}
    for kind, task in img.queued:
        queued.setdefault((task.tenant, task.job_id), []).append((kind, task))
    leases: dict[JobKey, list[Lease]] = {}
    for lease in img.leases.values():
        if lease.is_refresh:  # a floating-limit refresh lease belongs to no job
            continue
        leases.setdefault((lease.tenant, lease.job_id), []).append(lease)
    for key, st in sorted(img.states.items()):
        q = queued.get(key, [])
        ls = leases.get(key, [])
        atts = img.attempts.get(key, {})
        running = sorted(a.attempt for a in atts.values() if a.state == AttemptState.RUNNING)
        qs = [f"{kind}:attempt{t.attempt}@{t.due_ms}" for kind, t in q]
        name = st.status.name
        if st.status.terminal:
            if q:
                problems.append((Invariant.TERMINAL_CLEAN,
                                 f"{where}: {name} job {key} holds queued task(s) {qs}"))
            if ls:
                problems.append((Invariant.TERMINAL_CLEAN,
                                 f"{where}: {name} job {key} holds lease(s) "
                                    f"{[x.task_id for x in ls]}"))
            if running:
                problems.append((Invariant.TRANSITIONS,
                                 f"{where}: {name} job {key} has RUNNING attempt(s) {running}"))
        elif st.status == JobStatus.SCHEDULED:
            if ls:
                problems.append((Invariant.SINGLE_LEASE,
                                 f"{where}: SCHEDULED job {key} holds lease(s) "
                                    f"{[x.task_id for x in ls]}"))
            if running:
                problems.append((Invariant.TRANSITIONS,
                                 f"{where}: SCHEDULED job {key} has RUNNING attempt(s) "
                                    f"{running}"))
            want = None
            if st.task is not None:
                want = (WHERE_KINDS[st.task[2]], st.task[0], st.task[1])
            have = [(kind, t.attempt, t.due_ms) for kind, t in q]
            if want is None or have != [want]:
                problems.append((Invariant.TRANSITIONS,
                                 f"{where}: SCHEDULED job {key} should have exactly its task "
                                    f"{want} queued, has {have}"))
        else:  # RUNNING
            if len(ls) != 1 or ls[0].task_id != st.lease_task_id:
                inv = Invariant.SINGLE_LEASE if len(ls) > 1 else Invariant.TRANSITIONS
                problems.append((inv, f"{where}: RUNNING job {key} (lease {st.lease_task_id}) "
                                      f"holds leases {[x.task_id for x in ls]}"))
            if len(running) != 1:
                problems.append((Invariant.TRANSITIONS,
                                 f"{where}: RUNNING job {key} has RUNNING attempts {running}"))
            if q:
                problems.append((Invariant.SINGLE_LEASE,
                                 f"{where}: RUNNING job {key} still has queued task(s) {qs}: "
                                    f"it can be leased again"))
        if key in img.high_water:
            problems.append((Invariant.ATTEMPTS,
                             f"{where}: job {key} exists beside the attempt high-water row "
                             f"of a deleted job of that id ({img.high_water[key].attempt})"))
        if not 0 <= st.undelivered <= MAX_UNDELIVERED or st.run_attempts < 0:
            problems.append((Invariant.ATTEMPTS,
                             f"{where}: job {key} has undelivered={st.undelivered} (0.."
                                f"{MAX_UNDELIVERED}) and run_attempts={st.run_attempts}"))
        undelivered = sum(1 for a in atts.values() if a.state == AttemptState.UNDELIVERED)
        if undelivered < st.undelivered:
            problems.append((Invariant.ATTEMPTS,
                             f"{where}: job {key} counts {st.undelivered} undelivered "
                                f"attempts but only {undelivered} are stored"))
        if atts and max(atts) > st.attempt:
            problems.append((Invariant.ATTEMPTS,
                             f"{where}: job {key} has attempt {max(atts)} above its attempt "
                                f"counter {st.attempt}"))
    for key in sorted(set(queued) - set(img.states)):
        problems.append((Invariant.TERMINAL_CLEAN, f"{where}: queued task(s) of missing job {key}"))
    for key in sorted(set(leases) - set(img.states)):
        problems.append((Invariant.TERMINAL_CLEAN, f"{where}: lease(s) of missing job {key}"))
    index = sorted(img.expiries)
    want_index = sorted((x.expiry_ms, x.task_id) for x in img.leases.values())
    if index != want_index:
        problems.append((Invariant.REAP_AND_CANCEL,
                         f"{where}: lease expiry index {index} does not match the leases "
                            f"{want_index} (a lease without an index entry is never reaped)"))
    diff = diff_counters(img.stored_counters(), img.recount())
    if diff:
        problems.append((Invariant.COUNTERS,
                         f"{where}: stored counters differ from a recount: {diff}"))
    for key in sorted(set(img.fingerprints) - set(img.infos)):
        problems.append((Invariant.TRANSITIONS,
                         f"{where}: request fingerprint of missing job {key}"))
    for key in sorted(set(img.infos) - set(img.fingerprints)):
        problems.append((Invariant.TRANSITIONS,
                         f"{where}: job {key} has no request fingerprint: a retried "
                            f"enqueue of it would be refused"))
    return problems

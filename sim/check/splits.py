"""Invariant 11: splits lose no job, shard ranges never overlap and always cover the hash
space, a split child's cleanup never deletes a row of a tenant inside its range, and no two
splits name the same child.

Fed by ``split_phase`` (every phase a node records), ``split_cleanup`` (each cleanup batch, with
the tenants whose rows it deleted) and every other event (a parent that writes once it has been
cloned is writing into a store about to be discarded: those writes are lost). Ranges are judged
with the routing hash computed here, never with what the node's cleanup thought.

On the commit, the job models (and the per-shard queue, holder and token models) of the
parent move to the child that owns each tenant; after a crash, :meth:`SplitChecks.adopt_map`
does the same when the node's map on disk shows a commit whose event the crash cut off.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from silo.cluster.shard_map import InvalidShardMap, ShardMap, ShardRange, tenant_hash
from silo.keys import Prefix, key
from sim import events
from sim.check.base import CheckerBase
from sim.check.model import _host_name
from sim.invariants import Invariant


class SplitChecks(CheckerBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._splits: dict[str, Any] = {
            "seen": {},  # (node, parent) -> SplitPhaseRecorded (latest)
            "frozen": set(),  # (node, parent): cloned, not yet aborted or committed
            "moved": set(),  # (node, parent): models moved to the children
            "ranges": {},  # (node, shard) -> ShardRange of a split child
            "named": {},  # (node, shard) -> parent of the split that named it a child
            "retired": {},  # shard -> the committed split that replaced it in the map
        }
        self.split_cleanup_batches = 0

    def _split_state(self) -> dict[str, Any]:
        return self._splits

    def on_event(self, host: Any, kind: str, fields: dict[str, Any] | events.Event) -> None:
        if self.failed is None and kind not in ("split_phase", "shard_closed"):
            ev = fields if isinstance(fields, events.Event) else events.parse(kind, fields)
            name = _host_name(host)
            if (name, ev.shard) in self._split_state()["frozen"]:
                self.fail(Invariant.SPLITS,
                          f"{name} shard {ev.shard} wrote ({kind}) after it was cloned for its "
                          f"split: the write is lost with the parent's store",
                          f"event: {kind} {ev}")
                return
            fields = ev
        super().on_event(host, kind, fields)

    def _on_split_phase(self, host: Any, f: events.SplitPhaseRecorded) -> None:
        st = self._split_state()
        name = _host_name(host)
        st["seen"][(name, f.parent)] = f
        if f.phase == "requested":
            self._check_new_children(name, f)
        elif f.phase == "cloned":
            st["frozen"].add((name, f.parent))
        elif f.phase == "aborted":
            st["frozen"].discard((name, f.parent))
        elif f.phase == "committed":
            self._check_committed_map(host, f)
            st["retired"][f.parent] = f
            self._move(host, f)
        elif f.phase == "children_open":
            self._move(host, f)
            self._check_children_hold_jobs(host, f)

    def _check_new_children(self, name: str, f: events.SplitPhaseRecorded) -> None:
        """A split's children are shard ids no split has named before: two splits naming
        the same child clone into (and, undone, destroy) the same directory."""
        named = self._split_state()["named"]
        for child in (f.left, f.right):
            earlier = named.get((name, child))
            if earlier is not None:
                self.fail(Invariant.SPLITS,
                          f"the split of shard {f.parent} names shard {child} as a child, "
                          f"which the split of shard {earlier} already named",
                          f"split: {f}")
                return
            named[(name, child)] = f.parent

    def _children(self, f: events.SplitPhaseRecorded) -> tuple[ShardRange, ShardRange]:
        return (ShardRange(f.left, f.start, f.split_hash),
                ShardRange(f.right, f.split_hash, f.end))

    def _check_committed_map(self, host: Any, f: events.SplitPhaseRecorded) -> None:
        try:
            m = ShardMap(f.map_version + 1, tuple(ShardRange(int(a), int(b), int(c))
                                                  for a, b, c in (f.ranges or [])))
        except InvalidShardMap as exc:
            self.fail(Invariant.SPLITS, f"the shard map committed by the split of shard "
                      f"{f.parent} is invalid: {exc}")
            return
        if m.get(f.parent) is not None or any(m.get(c.shard_id) != c
                                              for c in self._children(f)):
            self.fail(Invariant.SPLITS, f"the map committed by the split of shard {f.parent} "
                      f"does not replace it by its children {self._children(f)}: {m}")

    def _on_shard_opened(self, host: Any, f: events.ShardOpened) -> None:
        """A shard a committed split replaced never opens again, on any node: its directory
        is gone, so it would open empty and answer for tenants its children hold."""
        retired = self._split_state()["retired"].get(f.shard)
        if retired is not None:
            self.fail(Invariant.SPLITS,
                      f"{_host_name(host)} opened shard {f.shard} after its split committed "
                      f"(into {retired.left} and {retired.right})", f"split: {retired}")
            return
        super()._on_shard_opened(host, f)

    def adopt_map(self, host: Any, shard_map: ShardMap) -> None:
        """After a crash: move the models of every split whose commit the map shows."""
        for (name, parent), f in sorted(self._split_state()["seen"].items()):
            if name == _host_name(host) and shard_map.get(parent) is None and all(
                    shard_map.get(c.shard_id) == c for c in self._children(f)):
                self._split_state()["retired"][parent] = f
                self._move(host, f)

    def _move(self, host: Any, f: events.SplitPhaseRecorded) -> None:
        st = self._split_state()
        name = _host_name(host)
        if (name, f.parent) in st["moved"]:
            return
        st["moved"].add((name, f.parent))
        st["frozen"].discard((name, f.parent))
        children = self._children(f)
        for c in children:
            st["ranges"][(name, c.shard_id)] = c

        def child_of(tenant: str) -> int:
            h = tenant_hash(tenant)
            return next(c.shard_id for c in children if c.contains(h))

        for _, j in sorted(self.jobs.items()):
            if j.host is host and j.shard == f.parent:
                old_task = j.task
                self._set_task(j, None)
                j.shard = child_of(j.tenant)
                if old_task is not None:
                    j.task = old_task
                    self.queues.setdefault((name, j.shard, j.task_group), {})[j.key] = j
        for q in [q for q in self.queues if q[0] == name and q[1] == f.parent]:
            if not self.queues[q]:
                del self.queues[q]
        for d in (self.holders, self.max_seen, self.peak_holders):
            for q in [q for q in d if q[0] == name and q[1] == f.parent]:
                d[(name, child_of(q[2]), *q[2:])] = d.pop(q)
        for b in [b for b in self.tokens if b[0] == f.parent]:
            self.tokens[(child_of(b[1]), *b[1:])] = self.tokens.pop(b)
        for tid, owner in sorted(self.task_owner.items()):
            if owner.shard == f.parent:
                self.task_owner[tid] = replace(owner, shard=child_of(owner.tenant))

    def _check_children_hold_jobs(self, host: Any, f: events.SplitPhaseRecorded) -> None:
        """Every job the parent held (by the events) is in the child owning its tenant."""
        if self._probe is None:
            return
        children = {c.shard_id for c in self._children(f)}
        for k, j in sorted(self.jobs.items()):
            if j.host is not host or j.deleted or j.shard not in children:
                continue
            if self._probe(host, j.shard, key(Prefix.JOB, j.tenant, j.job_id)) is None:
                self.fail(Invariant.SPLITS,
                          f"job {k} was lost by the split of shard {f.parent}: it is not in "
                          f"child {j.shard}, which owns its tenant", j.describe())
                return

    def _on_split_cleanup(self, host: Any, f: events.SplitCleanup) -> None:
        st = self._split_state()
        self.split_cleanup_batches += 1
        rng = st["ranges"].get((_host_name(host), f.shard))
        if rng is None:
            self.fail(Invariant.SPLITS, f"shard {f.shard} ran a split cleanup, but no "
                      f"committed split created it")
            return
        for tenant in f.tenants or []:
            h = tenant_hash(tenant)
            if rng.contains(h):
                self.fail(Invariant.SPLITS,
                          f"the cleanup of shard {f.shard} deleted {f.stage} rows of tenant "
                          f"{tenant!r}, whose hash {h:#018x} is inside its range "
                          f"[{rng.start:#018x}, {rng.end:#018x})")
                return

"""Limits: concurrency slots (2) and rate windows (13)."""

from __future__ import annotations

import bisect
from typing import Any

from silo.model import TIMER
from sim import events
from sim.check.base import CheckerBase
from sim.check.model import (
    _host_name,
)
from sim.invariants import Invariant


class LimitChecks(CheckerBase):
    """Limits: concurrency slots (2) and rate windows (13)."""

    def _on_token_taken(self, host: Any, f: events.TokenTaken) -> None:
        ev = f"event: token_taken {f}"
        slot, limit, per_ms = f.slot_ms, f.limit, f.per_ms
        b = (f.shard, f.tenant, f.name, f.key)
        slots = self.tokens.setdefault(b, [])
        i = bisect.bisect_right(slots, slot)
        slots.insert(i, slot)
        for j in range(max(0, i - limit), i + 1):
            if j + limit < len(slots) and slots[j + limit] - slots[j] < per_ms:
                self.fail(Invariant.NOT_BEFORE_DUE,
                          f"rate bucket {b[2]}/{b[3]} (tenant {b[1]!r}, shard {b[0]}) took "
                          f"{limit + 1} tokens within {per_ms} ms (limit {limit}): "
                          f"{slots[j:j + limit + 1]}", ev)
                return
        if len(slots) > 4 * limit + 64:
            del slots[: len(slots) - 2 * limit - 32]  # keeps every window a new slot can join

    def _on_slot_granted(self, host: Any, f: events.SlotGranted) -> None:
        q = (_host_name(host), f.shard, f.tenant, f.queue)
        held = self.holders.setdefault(q, {})
        ev = f"event: slot_granted {f}"
        tid = f.task_id
        self.grants += 1
        self.max_seen.setdefault(q, set()).add(f.max)
        if tid in held:
            self.fail(Invariant.SLOT_LIMIT,
                      f"slot of queue {q[2:]} (shard {q[1]}) granted twice to task {tid} "
                         f"without a release in between", ev)
            return
        held[tid] = f.job_id
        if f.holders > f.max:
            self.fail(Invariant.SLOT_LIMIT,
                      f"queue {q[2:]} (shard {q[1]}) has {f.holders} holders after a grant "
                         f"but its max is {f.max}", f"holders: {sorted(held)}", ev)
            return
        if f.holders != len(held):
            self.fail(Invariant.SLOT_LIMIT,
                      f"queue {q[2:]} (shard {q[1]}) reports {f.holders} holders after a "
                         f"grant, but granted minus released slots are {len(held)}: a holder "
                         f"count drifted from the grants", f"holders: {sorted(held)}", ev)
            return
        self.peak_holders[q] = max(self.peak_holders.get(q, 0), len(held))
        for other in self.jobs.values():
            t = other.task
            if (other.tenant == q[2] and other.shard == q[1] and _host_name(other.host) == q[0]
                    and t is not None and t.where == TIMER and t.attempt > 1
                    and t.limits_left > 0 and t.due_ms > f.at_ms):
                self.grants_during_backoff += 1
                break

    def _on_slot_released(self, host: Any, f: events.SlotReleased) -> None:
        q = (_host_name(host), f.shard, f.tenant, f.queue)
        held = self.holders.setdefault(q, {})
        if held.pop(f.task_id, None) is None:
            self.fail(Invariant.SLOT_LIMIT,
                      f"slot of queue {q[2:]} (shard {q[1]}) released by task {f.task_id} "
                         f"that held none", f"holders: {sorted(held)}",
                      f"event: slot_released {f}")
            return
        self.releases += 1
        if self._probe is not None:
            from silo.shard.tables import holder_key

            if self._probe(host, f.shard, holder_key(f.tenant, f.queue,
                                                        f.task_id)) is not None:
                self.fail(Invariant.SLOT_LIMIT,
                          f"slot of queue {q[2:]} (shard {q[1]}) released by task "
                             f"{f.task_id}, but its holder row is still on disk: the slot "
                             f"is held forever", f"event: slot_released {f}")

    def _on_refresh_ended(self, host: Any, f: events.RefreshEnded) -> None:
        self.refreshes[("reaped" if f.reaped else "failed" if f.new_max is None
                        else "ok")] += 1
        if f.new_max is not None:
            q = (_host_name(host), f.shard, f.tenant, f.queue)
            self.max_seen.setdefault(q, set()).add(f.new_max)

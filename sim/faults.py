"""The fault switchboard of a run: named fault points, their rates, and how often each fired.

Every component that can fail asks a :class:`SimFaults` (a :class:`silo.runtime.Faults` with its
own seeded stream) whether the fault at a point happens now; all of them share one
:class:`FaultBoard`, which holds the rates, the counts and the on/off switch that healing turns
off. Faults the simulator itself injects (crashes, partitions, clock jumps) are counted on the same
board.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from silo.runtime.faults import Faults
from silo.runtime.points import BUGGIFY_POINTS, PROBES
from sim.trace import Trace

BUGGIFY_ENABLE_PROB = 0.25
"""Chance that a run enables a given BUGGIFY point (FoundationDB-style: a few per run)."""
BUGGIFY_FIRE_PROBS: tuple[float, ...] = (0.01, 0.05, 0.25)
"""An enabled point fires with one of these probabilities (drawn per point per run)."""

FAULT_POINTS: tuple[str, ...] = (
    "net.drop.request",
    "net.drop.response",
    "net.duplicate",
    "net.reorder",
    "net.partition",
    "node.crash",
    "node.restart",
    "disk.write.error",
    "shard.write.error",
    "clock.jump",
    "worker.crash",
    "worker.stop",
    "etcd.unavailable",
)
"""Every named fault point (``node.restart`` is a clean stop and start of a node,
``worker.stop`` a clean stop and later start of a worker;
``etcd.unavailable``: the simulated etcd answers one call with UNAVAILABLE, as etcd does without a
leader)."""


class FaultBoard:
    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.rates: dict[str, float] = {}
        self.fired: dict[str, int] = {}
        self.enabled = True
        self.buggify_rates: dict[str, float] = {}
        """The BUGGIFY points this run enabled and their firing probabilities."""
        self.buggified: dict[str, int] = {}
        self.probes: dict[str, int] = {}

    def choose_buggify(self, rng: random.Random, allowed: bool = True) -> None:
        """Enable a seeded subset of BUGGIFY points for the whole run (none if not allowed).
        Forced paths are legal, so they stay on after healing."""
        self.buggify_rates = {}
        for point in sorted(BUGGIFY_POINTS):
            on = rng.random() < BUGGIFY_ENABLE_PROB
            rate = rng.choice(BUGGIFY_FIRE_PROBS)
            if on and allowed:
                self.buggify_rates[point] = rate
        if self.buggify_rates:
            self.trace.record("buggify " + " ".join(
                f"{k}={v}" for k, v in sorted(self.buggify_rates.items())))

    def buggify(self, rng: random.Random, point: str, where: str) -> bool:
        if point not in BUGGIFY_POINTS:
            raise ValueError(f"unknown BUGGIFY point {point!r} (register it in "
                             f"silo/runtime/points.py)")
        rate = self.buggify_rates.get(point, 0.0)
        if rate <= 0.0 or rng.random() >= rate:
            return False
        self.buggified[point] = self.buggified.get(point, 0) + 1
        self.trace.record(f"buggify {point} {where}".rstrip())
        return True

    def sometimes(self, probe: str) -> None:
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r} (register it in silo/runtime/points.py)")
        self.probes[probe] = self.probes.get(probe, 0) + 1

    def set_rates(self, rates: dict[str, float]) -> None:
        for point in rates:
            if point not in FAULT_POINTS:
                raise ValueError(f"unknown fault point {point!r}")
        self.rates = {k: v for k, v in sorted(rates.items()) if v > 0}

    def count(self, point: str, detail: str = "") -> None:
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {point!r}")
        self.fired[point] = self.fired.get(point, 0) + 1
        self.trace.record(f"fault {point} {detail}".rstrip())

    def faults_for(self, rng: random.Random, mutations: Iterable[str], where: str) -> SimFaults:
        return SimFaults(self, rng, mutations, where)

    def roll(self, rng: random.Random, point: str, detail: str = "") -> bool:
        """Draw whether ``point`` fires now (for the simulator's own fault points)."""
        if not self.enabled:
            return False
        rate = self.rates.get(point, 0.0)
        if rate <= 0.0 or rng.random() >= rate:
            return False
        self.count(point, detail)
        return True


class SimFaults(Faults):
    """A component's view of the board: its own stream, shared rates and counts."""

    def __init__(
        self, board: FaultBoard, rng: random.Random, mutations: Iterable[str], where: str
    ) -> None:
        super().__init__(rng, {}, mutations)
        self.board = board
        self.where = where
        self.fired = board.fired

    def fire(self, point: str) -> bool:
        assert self._rng is not None
        return self.board.roll(self._rng, point, self.where)

    def buggify(self, point: str) -> bool:
        assert self._rng is not None
        return self.board.buggify(self._rng, point, self.where)

    def sometimes(self, probe: str) -> None:
        self.board.sometimes(probe)

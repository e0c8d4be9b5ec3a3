"""The invariant checkers, by their older module name: see :mod:`sim.check` (one module per
invariant family)."""

from __future__ import annotations

from sim.check import (
    INVARIANTS,
    REAP_SLACK_S,
    STEP_SETTLE_S,
    Checker,
    Invariant,
    JobModel,
    LeaseModel,
    LeaseOwner,
    Queued,
    Violation,
    reachable,
)

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

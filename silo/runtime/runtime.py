"""The bundle of seams handed to every silo component."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from silo.runtime.clock import Clock, SystemClock
from silo.runtime.disk import Disk
from silo.runtime.faults import Faults
from silo.runtime.rand import RandomSource

EventSink = Callable[[str, dict[str, Any]], None]
"""Receives ``(kind, fields)`` for each durable state change (used by the simulator's checkers)."""


def _no_events(kind: str, fields: dict[str, Any]) -> None:
    return None


@dataclass
class Runtime:
    """Clock, randomness, storage, faults and the event sink of one node."""

    clock: Clock
    random: RandomSource
    disk: Disk
    faults: Faults = field(default_factory=Faults)
    events: EventSink = _no_events
    node_id: str = "node-1"


def real_runtime(node_id: str = "node-1") -> Runtime:
    """The production runtime: system clock, entropy-seeded randomness, LevelDB."""
    from silo.runtime.leveldb import LevelDBDisk

    return Runtime(
        clock=SystemClock(), random=RandomSource(), disk=LevelDBDisk(), node_id=node_id
    )

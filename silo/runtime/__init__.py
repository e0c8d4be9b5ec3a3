"""The seams: every source of time, randomness and storage that silo code may use.

Code outside this package (and ``silo/transport``) receives a :class:`Runtime` at construction and
never reaches the operating system itself; the simulator builds a :class:`Runtime` from simulated
parts and runs the same code.
"""

from silo.runtime.clock import Clock
from silo.runtime.disk import Disk, DiskError, KVStore, Snapshot, WriteBatch
from silo.runtime.faults import Faults
from silo.runtime.rand import RandomSource
from silo.runtime.runtime import EventSink, Runtime, real_runtime

__all__ = [
    "Clock",
    "Disk",
    "DiskError",
    "EventSink",
    "Faults",
    "KVStore",
    "RandomSource",
    "Runtime",
    "Snapshot",
    "WriteBatch",
    "real_runtime",
]

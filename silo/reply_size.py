"""How many bytes a LeaseTasks reply may take, and a conservative bound on what one task adds.

LeaseTasks sizes its reply while it picks tasks (DESIGN §4 "Delivery"): a lease is committed
only if the task fits in what is left of the reply's byte budget, so a committed lease is never
lost to a reply that is over ``max_message_bytes``. The bound here is computed from the task's
contents alone (no protobuf encoding on the hot path) and is never below the size of the
encoded ``pb.Task`` plus its framing inside the ``LeaseTasksResponse`` (a property test checks
this against the real encoding).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from silo.model import LeasedTask

FIELD_BYTES = 1 + 5
"""A field tag (field numbers below 16: one byte) and a length prefix (at most 5 bytes for any
length below 4 GiB)."""

VARINT_FIELD_BYTES = 1 + 10
"""A field tag and the longest varint (a 64-bit value, or a negative int32)."""

TASK_FIXED_BYTES = FIELD_BYTES + 6 * VARINT_FIELD_BYTES + FIELD_BYTES
"""The task's own framing in the reply's repeated field, its varint fields (shard, attempt,
priority, lease expiry, timeout and one spare) and the refresh submessage's framing."""

REPLY_HEADROOM_DIVISOR = 16
"""A sixteenth of ``max_message_bytes`` (1 MiB of the default 16 MiB) is kept free for the
reply's other fields and as a margin on the estimate."""


def _str_bytes(value: str) -> int:
    return FIELD_BYTES + len(value.encode("utf-8", "surrogatepass"))


def _map_bytes(entries: Mapping[str, str]) -> int:
    return sum(FIELD_BYTES + _str_bytes(k) + _str_bytes(v) for k, v in entries.items())


def task_reply_bytes(task: LeasedTask) -> int:
    """An upper bound on the bytes ``task`` adds to a LeaseTasks reply."""
    size = TASK_FIXED_BYTES
    size += _str_bytes(task.task_id) + _str_bytes(task.tenant) + _str_bytes(task.job_id)
    size += _str_bytes(task.task_group) + FIELD_BYTES + len(task.payload)
    size += _map_bytes(task.metadata)
    if task.refresh is not None:
        size += _str_bytes(task.refresh.queue) + VARINT_FIELD_BYTES
        size += _map_bytes(task.refresh.metadata)
    return size


def max_reply_bytes(max_message_bytes: int) -> int:
    """The byte budget for the tasks of one LeaseTasks reply under ``max_message_bytes``."""
    return max(1, max_message_bytes - max_message_bytes // REPLY_HEADROOM_DIVISOR)


class Fit(Enum):
    FITS = "fits"
    FULL = "full"
    """Not behind what the reply already holds: stop picking (it goes in a later reply)."""
    TOO_LARGE = "too large"
    """Larger than a whole reply: it can never be sent."""


class ReplyBudget:
    """The bytes left for tasks in one LeaseTasks reply (possibly shared by several shards:
    ``used_bytes`` is what earlier shards already put in it). ``max_bytes=None``: unbounded."""

    def __init__(self, max_bytes: int | None, used_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = used_bytes

    def fit(self, size_bytes: int) -> Fit:
        if self.max_bytes is None or self.used_bytes + size_bytes <= self.max_bytes:
            return Fit.FITS
        if size_bytes > self.max_bytes:
            return Fit.TOO_LARGE
        return Fit.FULL

    def take(self, size_bytes: int) -> None:
        self.used_bytes += size_bytes

"""Shard splits, the pure part (DESIGN §6 "Split"): the split record and its phases, child
ranges and ids, the split point, and which stored keys a child deletes. No I/O here; the effects
are :mod:`silo.cluster.splitting` and :mod:`silo.shard.cleanup`.

Phases of one split of ``parent`` at hash ``h`` into ``left = [start, h)`` and
``right = [h, end)``::

    REQUESTED -> PAUSED -> CLONED -> COMMITTED -> CHILDREN_OPEN -> CLEANUP_DONE
        \\_________\\________\\-> ABORTED   (only before the commit)

The shard-map compare-and-swap that replaces the parent by its children is the commit point:
before it a split can only be undone (clones discarded, parent intact), after it only finished.
Split points are routing hashes (``xxh64`` of the tenant, :func:`~silo.cluster.shard_map.
tenant_hash`), never tenant strings, and the same hashes decide what a child's cleanup deletes.

Which keys a child deletes (:func:`key_owner`), per table (:class:`~silo.keys.Prefix`):

- every table whose key carries the tenant (job, status, status index, metadata index, ready
  queue at position 3, timer index at position 1, attempt, cancel flag, concurrency request,
  holder and floating limit, rate bucket and reservation, attempt high water, fingerprint): the
  key's tenant decides;
- lease ``(task_id)``: the tenant stored in the lease value; lease expiry ``(expiry, task_id)``:
  the tenant of the lease it names (an expiry whose lease row is missing is kept: it names no
  tenant, the reaper drops it as it would in the parent);
- quarantine ``(original key hex)``: the tenant of the original key if it has one, else kept in
  both children (an operator-only table; a duplicate there is harmless, a deletion is not);
- shard meta (counters, the split marker, cleanup progress, the rate floor): never deleted by
  the key sweep; the counters are recounted from the data when the cleanup ends (per-tenant
  counters of tenants outside the range disappear then);
- any key that does not parse, or an unknown prefix: kept (cleanup never deletes what it cannot
  attribute to a tenant outside the range).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum

import msgpack

from silo import keys
from silo.cluster.shard_map import HASH_SPACE, ShardMap, ShardRange, tenant_hash
from silo.errors import FailedPrecondition, InvalidArgument
from silo.keys import Prefix
from silo.model import CorruptRecord, Lease

MAX_SHARD_ID = 1 << 31
"""Child ids stay below this (they name directories and appear in every request)."""
MAX_SHARDS = 4096
"""The most shards a map may hold (as :meth:`ShardMap.even`)."""


class SplitPhase(IntEnum):
    REQUESTED = 1
    PAUSED = 2
    CLONED = 3
    COMMITTED = 4
    CHILDREN_OPEN = 5
    CLEANUP_DONE = 6
    ABORTED = 7

    @property
    def committed(self) -> bool:
        """True once the shard map names the children (the split stands)."""
        return self in (SplitPhase.COMMITTED, SplitPhase.CHILDREN_OPEN, SplitPhase.CLEANUP_DONE)

    @property
    def finished(self) -> bool:
        return self in (SplitPhase.CLEANUP_DONE, SplitPhase.ABORTED)

    @property
    def label(self) -> str:
        return self.name.lower()


_NEXT: dict[SplitPhase, tuple[SplitPhase, ...]] = {
    SplitPhase.REQUESTED: (SplitPhase.PAUSED, SplitPhase.ABORTED),
    SplitPhase.PAUSED: (SplitPhase.CLONED, SplitPhase.ABORTED),
    SplitPhase.CLONED: (SplitPhase.COMMITTED, SplitPhase.ABORTED),
    SplitPhase.COMMITTED: (SplitPhase.CHILDREN_OPEN,),
    SplitPhase.CHILDREN_OPEN: (SplitPhase.CLEANUP_DONE,),
    SplitPhase.CLEANUP_DONE: (),
    SplitPhase.ABORTED: (),
}


class IllegalSplitTransition(ValueError):
    """A split asked to move to a phase it cannot reach from where it is."""


def legal_transition(old: SplitPhase, new: SplitPhase) -> bool:
    return new in _NEXT[old]


@dataclass(frozen=True, slots=True)
class SplitRecord:
    """One split: where it stands and everything needed to finish or undo it after a crash.

    ``map_version`` is the version of the shard map the split was planned on; the committed
    map has ``map_version + 1``.
    """

    parent: int
    parent_start: int
    parent_end: int
    split_hash: int
    left: int
    right: int
    map_version: int
    phase: SplitPhase = SplitPhase.REQUESTED
    requested_at_ms: int = 0
    changed_at_ms: int = 0
    reason: str = ""
    """Why it was aborted (empty otherwise)."""
    cleaned: tuple[int, ...] = ()
    """Children whose cleanup finished, as recorded by whichever node serves them (cluster
    mode, where the two children may be served by different nodes)."""

    def __post_init__(self) -> None:
        check_split_hash(ShardRange(self.parent, self.parent_start, self.parent_end),
                         self.split_hash)
        if len({self.parent, self.left, self.right}) != 3:
            raise ValueError("a split's parent and children need three distinct shard ids")

    @property
    def parent_range(self) -> ShardRange:
        return ShardRange(self.parent, self.parent_start, self.parent_end)

    @property
    def children(self) -> tuple[ShardRange, ShardRange]:
        return (ShardRange(self.left, self.parent_start, self.split_hash),
                ShardRange(self.right, self.split_hash, self.parent_end))

    def advance(self, phase: SplitPhase, now_ms: int, reason: str = "") -> SplitRecord:
        """The record in ``phase``; :class:`IllegalSplitTransition` if it cannot go there."""
        if not legal_transition(self.phase, phase):
            raise IllegalSplitTransition(
                f"split of shard {self.parent}: {self.phase.label} -> {phase.label} is not a "
                f"legal transition")
        return replace(self, phase=phase, changed_at_ms=now_ms, reason=reason)

    def with_cleaned(self, child: int) -> SplitRecord:
        """The record noting that ``child``'s cleanup finished."""
        if child not in (self.left, self.right):
            raise ValueError(f"shard {child} is not a child of shard {self.parent}")
        return replace(self, cleaned=tuple(sorted({*self.cleaned, child})))

    def encode(self) -> list[object]:
        row: list[object] = [
            1, self.parent, self.parent_start, self.parent_end - 1, self.split_hash,
            self.left, self.right, self.map_version, int(self.phase),
            self.requested_at_ms, self.changed_at_ms, self.reason]
        if self.cleaned:
            row[0] = 2
            row.append(list(self.cleaned))
        return row

    @classmethod
    def decode(cls, row: object) -> SplitRecord:
        try:
            assert isinstance(row, list | tuple)
            fmt = row[0]
            if fmt not in (1, 2):
                raise ValueError(f"unknown split record format {fmt}")
            (_, parent, start, last, h, left, right, version, phase, req, changed,
             reason) = row[:12]
            cleaned: tuple[int, ...] = ()
            if fmt == 2:
                (extra,) = row[12:]
                assert isinstance(extra, list | tuple) and len(extra) <= 2
                cleaned = tuple(sorted({int(c) for c in extra}))
            return cls(int(parent), int(start), int(last) + 1, int(h), int(left), int(right),
                       int(version), SplitPhase(int(phase)), int(req), int(changed),
                       str(reason), cleaned)
        except (AssertionError, ValueError, TypeError) as exc:
            raise ValueError(f"unreadable split record: {exc}") from exc


def encode_records(records: Mapping[int, SplitRecord], reserved_to: int = 0) -> bytes:
    """The records file of coordination ``none``: the records and the highest child id any
    split has reserved (:func:`child_ids`)."""
    rows = [records[p].encode() for p in sorted(records)]
    if reserved_to:
        return msgpack.packb([2, rows, reserved_to])
    return msgpack.packb([1, rows])


def decode_records(data: bytes) -> tuple[dict[int, SplitRecord], int]:
    """The records and the reservation of :func:`encode_records` (a format-1 file, written
    before reservations were stored, reserves the highest child id its records name)."""
    try:
        row = msgpack.unpackb(data)
        assert isinstance(row, list | tuple) and row
        fmt = row[0]
        if fmt == 1:
            (_, rows), reserved_to = row, 0
        elif fmt == 2:
            (_, rows, reserved_to) = row
        else:
            raise ValueError(f"unknown split records format {fmt}")
        assert isinstance(rows, list | tuple) and isinstance(reserved_to, int)
    except (AssertionError, ValueError, TypeError) as exc:
        raise ValueError(f"unreadable split records: {exc}") from exc
    out = [SplitRecord.decode(r) for r in rows]
    reserved_to = max([reserved_to, *(max(r.left, r.right) for r in out)])
    return {r.parent: r for r in sorted(out, key=lambda r: r.parent)}, reserved_to


# -- planning -------------------------------------------------------------------------------


def check_split_hash(rng: ShardRange, split_hash: int) -> int:
    """``split_hash`` if strictly inside ``rng`` (both children non-empty), else
    INVALID_ARGUMENT naming the range."""
    if not rng.start < split_hash < rng.end:
        raise InvalidArgument(
            f"split hash {split_hash} is not strictly inside shard {rng.shard_id}'s range "
            f"[{rng.start}, {rng.end}): it must be above {rng.start} and below {rng.end}")
    return split_hash


def child_ids(shard_map: ShardMap, reserved_to: int = 0) -> tuple[int, int]:
    """Ids for the two children: above every id in the map and above ``reserved_to``, the
    highest id any split has reserved for its children (a split not yet committed names
    children that are in no map). The reservation is raised by the same atomic write that
    records the split (:meth:`SplitCoordination.save_record`), so no id is ever used twice,
    even by two splits planned at once on different nodes."""
    top = max(max(s.shard_id for s in shard_map.shards), reserved_to)
    if top + 2 >= MAX_SHARD_ID:
        raise FailedPrecondition(f"shard ids are exhausted (largest id {top})")
    return top + 1, top + 2


def split_map(shard_map: ShardMap, record: SplitRecord) -> ShardMap:
    """``shard_map`` with the parent replaced by its children, one version higher."""
    parent = shard_map.get(record.parent)
    if parent != record.parent_range:
        raise FailedPrecondition(
            f"shard {record.parent} is not in the shard map with range "
            f"[{record.parent_start}, {record.parent_end})")
    if len(shard_map.shards) + 1 > MAX_SHARDS:
        raise FailedPrecondition(f"a split would exceed {MAX_SHARDS} shards")
    rest = tuple(s for s in shard_map.shards if s.shard_id != record.parent)
    return ShardMap(shard_map.version + 1, rest + record.children)


def map_has_children(shard_map: ShardMap, record: SplitRecord) -> bool:
    """True when ``shard_map`` is (or descends from) the committed map of ``record``: both
    children are in it and the parent is not."""
    return (shard_map.get(record.parent) is None and shard_map.get(record.left) is not None
            and shard_map.get(record.right) is not None)


def plan_split(
    shard_map: ShardMap, parent: int, split_hash: int, now_ms: int, reserved_to: int = 0
) -> SplitRecord:
    """The REQUESTED record of a split of ``parent`` at ``split_hash``, with child ids above
    ``reserved_to`` (:func:`child_ids`)."""
    rng = shard_map.get(parent)
    if rng is None:
        raise InvalidArgument(f"shard {parent} is not in the shard map")
    left, right = child_ids(shard_map, reserved_to)
    check_split_hash(rng, split_hash)
    return SplitRecord(parent, rng.start, rng.end, split_hash, left, right, shard_map.version,
                       SplitPhase.REQUESTED, now_ms, now_ms)


def default_split_hash(rng: ShardRange, weights: Iterable[tuple[int, int]]) -> int:
    """The median tenant hash of the shard's data: ``weights`` are ``(tenant hash, jobs)``;
    the split point is the smallest hash at which the jobs below it reach half the total, so
    both children get about half the jobs (the tenant at the point goes right). When that
    point is not strictly inside the range (no data, or all of it in one tenant at the range
    start), the midpoint of the range."""
    pairs = sorted((h, n) for h, n in weights if n > 0 and rng.contains(h))
    total = sum(n for _, n in pairs)
    below = 0
    for h, n in pairs:
        if below * 2 >= total and rng.start < h:
            return h
        below += n
    if len(pairs) >= 2:
        return pairs[-1][0] if rng.start < pairs[-1][0] else _midpoint(rng)
    return _midpoint(rng)


def _midpoint(rng: ShardRange) -> int:
    if rng.end - rng.start < 2:
        raise FailedPrecondition(f"shard {rng.shard_id}'s range is too small to split")
    return rng.start + (rng.end - rng.start) // 2


# -- cleanup: which keys a child deletes ----------------------------------------------------

_TENANT_AT: dict[Prefix, int] = {
    Prefix.JOB: 0,
    Prefix.STATUS: 0,
    Prefix.STATUS_INDEX: 0,
    Prefix.METADATA_INDEX: 0,
    Prefix.READY: 3,
    Prefix.TIMER: 1,
    Prefix.ATTEMPT: 0,
    Prefix.CANCEL: 0,
    Prefix.CONCURRENCY_REQUEST: 0,
    Prefix.CONCURRENCY_HOLDER: 0,
    Prefix.FLOATING_LIMIT: 0,
    Prefix.RATE_BUCKET: 0,
    Prefix.ATTEMPT_HIGH_WATER: 0,
    Prefix.JOB_FINGERPRINT: 0,
    Prefix.RATE_RESERVATION: 0,
}
"""Tables whose key carries the tenant, and its position in the key tuple."""

LIVE_TABLES: tuple[Prefix, ...] = (
    Prefix.LEASE_EXPIRY, Prefix.LEASE, Prefix.READY, Prefix.TIMER,
    Prefix.CONCURRENCY_REQUEST, Prefix.CONCURRENCY_HOLDER, Prefix.FLOATING_LIMIT,
    Prefix.RATE_BUCKET, Prefix.RATE_RESERVATION,
)
"""Tables the shard mirrors in memory (queues, leases, limits): a child cleans these before it
serves, so it never leases, reaps, grants or promotes work of a tenant it does not own. Lease
expiries come before leases because an expiry names its tenant only through its lease."""

HISTORY_TABLES: tuple[Prefix, ...] = (
    Prefix.JOB, Prefix.STATUS, Prefix.STATUS_INDEX, Prefix.METADATA_INDEX, Prefix.ATTEMPT,
    Prefix.CANCEL, Prefix.ATTEMPT_HIGH_WATER, Prefix.JOB_FINGERPRINT, Prefix.QUARANTINE,
)
"""Tables only ever read by key of a routed tenant: cleaned in the background while the child
serves (no request reaches an out-of-range tenant's rows meanwhile)."""

assert set(LIVE_TABLES) | set(HISTORY_TABLES) | {Prefix.META} == set(Prefix)


@dataclass(frozen=True, slots=True)
class NeedsLease:
    """The key's tenant is that of the lease ``task_id`` (a lease-expiry row)."""

    task_id: str


KeyOwner = str | NeedsLease | None
"""A tenant, a lease to look up, or None: the key is kept."""


def key_owner(k: bytes, value: bytes | None = None) -> KeyOwner:
    """Who a stored row belongs to, for cleanup (see the module docstring for each table)."""
    try:
        prefix, parts = keys.parse(k)
    except ValueError:
        return None
    at = _TENANT_AT.get(prefix)
    if at is not None:
        tenant = parts[at] if len(parts) > at else None
        return tenant if isinstance(tenant, str) else None
    if prefix == Prefix.LEASE:
        if value is None:
            return None
        try:
            return Lease.decode(k, value).tenant
        except (CorruptRecord, ValueError):
            return None
    if prefix == Prefix.LEASE_EXPIRY:
        if len(parts) == 2 and isinstance(parts[1], str):
            return NeedsLease(parts[1])
        return None
    if prefix == Prefix.QUARANTINE:
        if len(parts) != 1 or not isinstance(parts[0], str):
            return None
        try:
            original = bytes.fromhex(parts[0])
        except ValueError:
            return None
        if original[:1] in (bytes((Prefix.QUARANTINE,)), bytes((Prefix.LEASE,))):
            return None  # a quarantined lease did not decode: its tenant is unknown
        owner = key_owner(original)
        return owner if isinstance(owner, str) else None
    return None


def tenant_position(tenant: str, *, by_string: bool = False) -> int:
    """Where ``tenant`` sits in the hash space: its routing hash. ``by_string`` is a planted
    bug for the simulator (mutation ``split-at-tenant-string``): the first eight bytes of the
    tenant string, the reference's mistake of comparing tenant strings with hashed ranges."""
    if by_string:
        return int.from_bytes(tenant.encode("utf-8")[:8].ljust(8, b"\x00"), "big")
    return tenant_hash(tenant)


def out_of_range(rng: ShardRange, tenant: str, *, by_string: bool = False,
                 exclusive_start: bool = False) -> bool:
    """True when ``tenant`` does not route into ``rng``: its rows go. ``exclusive_start`` is a
    planted bug (mutation ``cleanup-deletes-in-range``): a tenant hashing exactly to the
    range's start (the default split point is such a tenant) counts as outside."""
    h = tenant_position(tenant, by_string=by_string)
    if exclusive_start:
        return not rng.start < h < rng.end
    return not rng.contains(h)


def range_span(rng: ShardRange) -> int:
    return rng.end - rng.start


__all__ = [
    "HASH_SPACE",
    "HISTORY_TABLES",
    "LIVE_TABLES",
    "IllegalSplitTransition",
    "KeyOwner",
    "NeedsLease",
    "SplitPhase",
    "SplitRecord",
    "check_split_hash",
    "child_ids",
    "decode_records",
    "default_split_hash",
    "encode_records",
    "key_owner",
    "legal_transition",
    "map_has_children",
    "out_of_range",
    "plan_split",
    "split_map",
    "tenant_position",
]

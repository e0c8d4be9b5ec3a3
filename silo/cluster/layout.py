"""The cluster's keys in etcd and the pure decisions on txn outcomes (no I/O).

Keys, under a cluster ``prefix`` (e.g. ``/silo/prod``):

- ``{prefix}/members/{node}``: a live node; value :class:`MemberInfo` (JSON); attached to the
  node's TTL lease, so it disappears when the node stops renewing;
- ``{prefix}/shard_map``: the encoded :class:`~silo.cluster.shard_map.ShardMap`; changed only by
  compare-and-swap on its mod revision, to a map with a higher version;
- ``{prefix}/shards/{id}/owner``: the node id owning shard ``id``; no TTL (it survives a crash
  so that the node, restarted with the same id, reclaims it); taken by put-if-absent, given up by
  delete-if-owner;
- ``{prefix}/splits/{parent}``: the record of a split of shard ``parent`` in progress (opaque
  bytes to this layer), changed by compare-and-swap on its mod revision;
- ``{prefix}/split_ids``: the highest shard id any split has reserved for its children (a
  decimal string), raised only by the txn that writes a split's first record, on compare of its
  mod revision: two splits planned at once never name the same child.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from silo.cluster.etcd import KeyValue, RangeResult, TxnResult
from silo.cluster.shard_map import InvalidShardMap, ShardMap
from silo.errors import InvalidArgument

MAX_PREFIX_BYTES = 256
MAX_NODE_ID_CHARS = 128
MAX_ADDRESS_CHARS = 256
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PREFIX = re.compile(r"(/[A-Za-z0-9._-]+)+")


def check_node_id(node_id: str) -> str:
    """``node_id`` if valid: 1..128 of ``[A-Za-z0-9._-]``, starting with a letter or digit."""
    if not 1 <= len(node_id) <= MAX_NODE_ID_CHARS or not _NODE_ID.fullmatch(node_id):
        raise InvalidArgument(
            f"node id {node_id!r} must be 1..{MAX_NODE_ID_CHARS} characters of [A-Za-z0-9._-] "
            "starting with a letter or digit"
        )
    return node_id


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """Key names under one cluster prefix (``/name[/name...]``, no trailing slash)."""

    prefix: str

    def __post_init__(self) -> None:
        if len(self.prefix.encode()) > MAX_PREFIX_BYTES or not _PREFIX.fullmatch(self.prefix):
            raise InvalidArgument(
                f"cluster prefix {self.prefix!r} must look like /name[/name...] (names of "
                f"[A-Za-z0-9._-]) and be at most 'max_prefix_bytes' {MAX_PREFIX_BYTES}"
            )

    @property
    def root(self) -> bytes:
        """Every key of the cluster starts with this (for one watch over everything)."""
        return f"{self.prefix}/".encode()

    @property
    def members(self) -> bytes:
        return f"{self.prefix}/members/".encode()

    def member(self, node_id: str) -> bytes:
        return self.members + check_node_id(node_id).encode()

    @property
    def shard_map(self) -> bytes:
        return f"{self.prefix}/shard_map".encode()

    @property
    def shards(self) -> bytes:
        return f"{self.prefix}/shards/".encode()

    def owner(self, shard_id: int) -> bytes:
        if shard_id < 0:
            raise InvalidArgument(f"shard id {shard_id} is negative")
        return self.shards + f"{shard_id}/owner".encode()

    @property
    def splits(self) -> bytes:
        return f"{self.prefix}/splits/".encode()

    def split(self, parent: int) -> bytes:
        if parent < 0:
            raise InvalidArgument(f"shard id {parent} is negative")
        return self.splits + str(parent).encode()

    @property
    def split_ids(self) -> bytes:
        return f"{self.prefix}/split_ids".encode()

    def member_of(self, key: bytes) -> str | None:
        """The node id of a members key, else None."""
        if not key.startswith(self.members):
            return None
        node = key[len(self.members):].decode(errors="replace")
        return node if _NODE_ID.fullmatch(node) else None

    def shard_of_owner(self, key: bytes) -> int | None:
        """The shard id of an ownership key, else None."""
        if not key.startswith(self.shards) or not key.endswith(b"/owner"):
            return None
        middle = key[len(self.shards):-len(b"/owner")]
        return int(middle) if middle.isdigit() else None

    def parent_of_split(self, key: bytes) -> int | None:
        if not key.startswith(self.splits):
            return None
        tail = key[len(self.splits):]
        return int(tail) if tail.isdigit() else None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    node_id: str
    address: str
    """Where the node serves silo's API (``host:port``)."""

    def encode(self) -> bytes:
        return json.dumps({"node": self.node_id, "address": self.address},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> MemberInfo:
        try:
            obj = json.loads(data)
            return cls(str(obj["node"]), str(obj["address"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"unreadable member record: {exc}") from exc


def check_address(address: str) -> str:
    if not 1 <= len(address) <= MAX_ADDRESS_CHARS or ":" not in address:
        raise InvalidArgument(
            f"address {address!r} must be host:port of at most {MAX_ADDRESS_CHARS} characters"
        )
    return address


@dataclass(frozen=True, slots=True)
class VersionedShardMap:
    """The shard map as read, with the mod revision a CAS must compare against (0: absent)."""

    map: ShardMap | None
    mod_revision: int

    @classmethod
    def from_kv(cls, kv: KeyValue | None) -> VersionedShardMap:
        if kv is None:
            return cls(None, 0)
        return cls(ShardMap.decode(kv.value), kv.mod_revision)


@dataclass(frozen=True, slots=True)
class Ownership:
    """The outcome of an acquire: ``owner`` holds ``shard_id`` (None: nobody)."""

    shard_id: int
    owner: str | None
    acquired: bool
    """True when the caller holds the shard now (newly, or already from before)."""


def check_successor(current: ShardMap | None, new: ShardMap) -> None:
    """A CAS may only install a map with a higher version."""
    if current is not None and new.version <= current.version:
        raise InvalidShardMap(
            f"new shard map version {new.version} is not above the current {current.version}"
        )


def _first_kv(result: TxnResult) -> KeyValue | None:
    for r in result.responses:
        if isinstance(r, RangeResult):
            return r.kvs[0] if r.kvs else None
    return None


def acquire_outcome(shard_id: int, node_id: str, result: TxnResult) -> Ownership:
    """Put-if-absent of the owner key with a read of it on failure. Finding our own id there
    (a retried acquire that had applied, or a restart reclaiming its shard) counts as held."""
    if result.succeeded:
        return Ownership(shard_id, node_id, True)
    kv = _first_kv(result)
    if kv is None:  # released between the compare and the read: impossible in one txn
        return Ownership(shard_id, None, False)
    owner = kv.value.decode(errors="replace")
    return Ownership(shard_id, owner, owner == node_id)


def release_outcome(node_id: str, result: TxnResult) -> str | None:
    """Delete-if-owner with a read on failure: the owner afterwards, never ``node_id`` (None:
    nobody). A failed compare means the key did not name us: released by an earlier attempt
    of a retried call (perhaps already taken by another node since), or never ours."""
    if result.succeeded:
        return None
    kv = _first_kv(result)
    if kv is None:
        return None
    owner = kv.value.decode(errors="replace")
    assert owner != node_id, "a value compare on our own id cannot fail"
    return owner


def cas_outcome(proposed: bytes, result: TxnResult) -> tuple[bool, VersionedShardMap]:
    """CAS of the shard map with a read on failure: ``(installed, map now)``. A failed compare
    that finds exactly the proposed bytes installed counts as success (a retried CAS whose
    first attempt applied): map versions only grow, so nobody else wrote those bytes (or they
    wrote the very same map). ``installed`` False means "not the map in force now": a retried CAS
    whose first attempt applied and was then replaced by someone else's CAS also reads False, so
    a caller that must know whether its change happened (a split's commit point) checks the
    content of the map now (do the children exist?), not this flag alone."""
    if result.succeeded:
        return True, VersionedShardMap(ShardMap.decode(proposed), result.revision)
    kv = _first_kv(result)
    current = VersionedShardMap.from_kv(kv)
    return (kv is not None and kv.value == proposed), current


__all__ = [
    "ClusterKeys",
    "MemberInfo",
    "Ownership",
    "VersionedShardMap",
    "acquire_outcome",
    "cas_outcome",
    "check_address",
    "check_node_id",
    "check_successor",
    "release_outcome",
]

"""Cluster coordination primitives: membership, the shard map, shard ownership and split
records; the :class:`Coordinator` interface and its etcd implementation.

These are the effects only. Key names and the decisions on txn outcomes are pure, in
:mod:`silo.cluster.layout`; where shards should go is :func:`silo.cluster.placement.assign`.
What to do with them (the reconcile loop: close before release, acquire before open, stop
serving when membership is lost) is built on top and is not here.

Guarantees (with etcd's linearizable KV):

- at most one node holds a shard's ownership key at any time; :meth:`Coordinator.acquire`
  succeeds only if the key is absent or already names this node, :meth:`Coordinator.release`
  deletes it only if it names this node;
- the shard map only changes by :meth:`Coordinator.cas_shard_map` from the exact revision the
  caller read, to a map with a higher version;
- a membership key lives only while its lease is renewed; :class:`Membership` reports, failing
  closed, the moment renewal can no longer be confirmed (see
  :class:`silo.cluster.etcd.LeaseKeeper`).

Every call may raise :class:`~silo.errors.Unavailable` when etcd cannot be reached (after the
client's bounded retries); a retried write is safe because each outcome is recognised by value
(:mod:`silo.cluster.layout`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import trio

from silo.cluster.etcd import (
    Compare,
    Delete,
    EtcdClient,
    Get,
    LeaseKeeper,
    Put,
    Watch,
)
from silo.cluster.layout import (
    ClusterKeys,
    MemberInfo,
    Ownership,
    VersionedShardMap,
    acquire_outcome,
    cas_outcome,
    check_address,
    check_node_id,
    check_successor,
    release_outcome,
)
from silo.cluster.shard_map import ShardMap
from silo.errors import FailedPrecondition, SiloError

MAX_MEMBERSHIP_TTL_S = 300
REVOKE_TIMEOUT_S = 2.0
"""How long leaving the cluster waits for etcd to revoke the membership lease."""


class Membership:
    """This node's live membership: a lease kept alive and the member key attached to it."""

    def __init__(self, info: MemberInfo, lease_id: int, keeper: LeaseKeeper) -> None:
        self.info = info
        self.lease_id = lease_id
        self._keeper = keeper

    @property
    def lost(self) -> trio.Event:
        """Set when the lease can no longer be known alive: stop acting as a member."""
        return self._keeper.lost

    @property
    def alive(self) -> bool:
        return self._keeper.alive

    @property
    def loss_reason(self) -> str:
        return self._keeper.loss_reason


class Coordinator(Protocol):
    """What the reconcile loop, routing and splits need from the coordination service."""

    node_id: str

    def membership(self, address: str, ttl_s: int) -> AbstractAsyncContextManager[Membership]:
        """Join: while the block runs this node is a member (key kept alive by a lease);
        leaving it revokes the lease (a graceful leave)."""
        ...

    async def members(self) -> dict[str, MemberInfo]:
        """Live members by node id."""
        ...

    async def read_shard_map(self) -> VersionedShardMap: ...

    async def create_shard_map(self, new: ShardMap) -> VersionedShardMap:
        """Install ``new`` if there is no map yet; the map in force afterwards."""
        ...

    async def cas_shard_map(
        self, expected: VersionedShardMap, new: ShardMap
    ) -> tuple[bool, VersionedShardMap]:
        """Replace the map read as ``expected`` by ``new`` (a higher version) if nobody changed
        it since: ``(installed, map now)``."""
        ...

    async def commit_split(
        self, expected: VersionedShardMap, new: ShardMap, parent: int,
        children: tuple[int, int],
    ) -> tuple[bool, VersionedShardMap]:
        """A split's commit point, one txn: if the map is still ``expected``, this node still
        owns ``parent`` and nobody owns either child, install ``new`` and take both children's
        ownership keys. ``(installed, map now)``, read like :meth:`cas_shard_map`."""
        ...

    async def owners(self) -> dict[int, str]:
        """Shard id -> owning node id, for every shard with an ownership key."""
        ...

    async def acquire(self, shard_id: int) -> Ownership: ...

    async def release(self, shard_id: int) -> str | None:
        """Give up ``shard_id``: afterwards its ownership key does not name this node. Returns
        the owner then (None: nobody)."""
        ...

    async def force_release(self, shard_id: int, owner: str | None = None) -> bool:
        """Operator release for a node gone for good: delete the ownership key (only if it
        names ``owner``, when given). True when a key was deleted."""
        ...

    async def splits(self) -> dict[int, tuple[bytes, int]]:
        """Split records: parent shard id -> (record, mod revision)."""
        ...

    async def reserved_split_ids(self) -> tuple[int, int]:
        """The highest shard id reserved for split children (0 if none) and the mod revision
        of the reservation (0 if none)."""
        ...

    async def put_split(self, parent: int, record: bytes, expected_mod_revision: int,
                        reserve: tuple[int, int] | None = None) -> bool:
        """Write the split record of ``parent`` if its mod revision is still
        ``expected_mod_revision`` (0: create it); with ``reserve = (reserved_to, revision)``,
        also set the child id reservation to ``reserved_to`` in the same txn, only if its mod
        revision is still ``revision``. True when the record holds ``record`` afterwards (a
        retried write that had gone through counts)."""
        ...

    async def delete_split(self, parent: int, expected_mod_revision: int) -> bool:
        """Delete the split record if unchanged since ``expected_mod_revision``: True when the
        record is gone afterwards."""
        ...

    def watch(self, start_revision: int) -> AbstractAsyncContextManager[Watch]:
        """Every change to the cluster's keys from ``start_revision`` on."""
        ...


class EtcdCoordinator:
    """:class:`Coordinator` on etcd (see :mod:`silo.cluster.layout` for the keys)."""

    def __init__(self, client: EtcdClient, keys: ClusterKeys, node_id: str) -> None:
        self.client = client
        self.keys = keys
        self.node_id = check_node_id(node_id)

    # -- membership -------------------------------------------------------------------------

    @asynccontextmanager
    async def membership(self, address: str, ttl_s: int) -> AsyncIterator[Membership]:
        if not 1 <= ttl_s <= MAX_MEMBERSHIP_TTL_S:
            raise SiloError(f"membership 'ttl_s' {ttl_s} is outside 1..{MAX_MEMBERSHIP_TTL_S}")
        info = MemberInfo(self.node_id, check_address(address))
        granted_at = trio.current_time()
        lease_id, ttl = await self.client.grant_lease(ttl_s)
        try:
            await self.client.put(self.keys.member(self.node_id), info.encode(), lease=lease_id)
            async with self.client.keep_alive(lease_id, ttl, granted_at=granted_at) as keeper:
                yield Membership(info, lease_id, keeper)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(REVOKE_TIMEOUT_S):
                try:
                    await self.client.revoke_lease(lease_id)
                except SiloError:
                    pass  # it expires by itself

    async def members(self) -> dict[str, MemberInfo]:
        result = await self.client.range(self.keys.members, prefix=True)
        out: dict[str, MemberInfo] = {}
        for kv in result.kvs:
            node = self.keys.member_of(kv.key)
            if node is not None:
                out[node] = MemberInfo.decode(kv.value)
        return out

    # -- shard map --------------------------------------------------------------------------

    async def read_shard_map(self) -> VersionedShardMap:
        return VersionedShardMap.from_kv(await self.client.get(self.keys.shard_map))

    async def create_shard_map(self, new: ShardMap) -> VersionedShardMap:
        return (await self._cas_map(0, new))[1]

    async def cas_shard_map(
        self, expected: VersionedShardMap, new: ShardMap
    ) -> tuple[bool, VersionedShardMap]:
        check_successor(expected.map, new)
        return await self._cas_map(expected.mod_revision, new)

    async def commit_split(
        self, expected: VersionedShardMap, new: ShardMap, parent: int,
        children: tuple[int, int],
    ) -> tuple[bool, VersionedShardMap]:
        check_successor(expected.map, new)
        key = self.keys.shard_map
        proposed = new.encode()
        me = self.node_id.encode()
        compares = [Compare.mod_revision(key, expected.mod_revision),
                    Compare.value_equals(self.keys.owner(parent), me)]
        compares += [Compare.absent(self.keys.owner(c)) for c in children]
        puts = [Put(key, proposed)] + [Put(self.keys.owner(c), me) for c in children]
        result = await self.client.txn(compares, puts, [Get(key)])
        return cas_outcome(proposed, result)

    async def _cas_map(self, mod_revision: int, new: ShardMap) -> tuple[bool, VersionedShardMap]:
        key = self.keys.shard_map
        proposed = new.encode()
        result = await self.client.txn(
            [Compare.mod_revision(key, mod_revision)], [Put(key, proposed)], [Get(key)]
        )
        return cas_outcome(proposed, result)

    # -- ownership --------------------------------------------------------------------------

    async def owners(self) -> dict[int, str]:
        result = await self.client.range(self.keys.shards, prefix=True)
        out: dict[int, str] = {}
        for kv in result.kvs:
            shard = self.keys.shard_of_owner(kv.key)
            if shard is not None:
                out[shard] = kv.value.decode(errors="replace")
        return dict(sorted(out.items()))

    async def acquire(self, shard_id: int) -> Ownership:
        key = self.keys.owner(shard_id)
        result = await self.client.txn(
            [Compare.absent(key)], [Put(key, self.node_id.encode())], [Get(key)]
        )
        return acquire_outcome(shard_id, self.node_id, result)

    async def release(self, shard_id: int) -> str | None:
        key = self.keys.owner(shard_id)
        result = await self.client.txn(
            [Compare.value_equals(key, self.node_id.encode())], [Delete(key)], [Get(key)]
        )
        return release_outcome(self.node_id, result)

    async def force_release(self, shard_id: int, owner: str | None = None) -> bool:
        key = self.keys.owner(shard_id)
        if owner is None:
            return await self.client.delete(key) > 0
        result = await self.client.txn(
            [Compare.value_equals(key, check_node_id(owner).encode())], [Delete(key)]
        )
        return result.succeeded

    # -- splits -----------------------------------------------------------------------------

    async def splits(self) -> dict[int, tuple[bytes, int]]:
        result = await self.client.range(self.keys.splits, prefix=True)
        out: dict[int, tuple[bytes, int]] = {}
        for kv in result.kvs:
            parent = self.keys.parent_of_split(kv.key)
            if parent is not None:
                out[parent] = (kv.value, kv.mod_revision)
        return dict(sorted(out.items()))

    async def reserved_split_ids(self) -> tuple[int, int]:
        kv = await self.client.get(self.keys.split_ids)
        if kv is None:
            return 0, 0
        raw = kv.value.decode(errors="replace")
        if not raw.isdigit():
            raise FailedPrecondition(f"the cluster's split id reservation {raw!r} is unreadable")
        return int(raw), kv.mod_revision

    async def put_split(self, parent: int, record: bytes, expected_mod_revision: int,
                        reserve: tuple[int, int] | None = None) -> bool:
        key = self.keys.split(parent)
        compares = [Compare.mod_revision(key, expected_mod_revision)]
        puts = [Put(key, record)]
        if reserve is not None:
            reserved_to, ids_revision = reserve
            compares.append(Compare.mod_revision(self.keys.split_ids, ids_revision))
            puts.append(Put(self.keys.split_ids, str(reserved_to).encode()))
        result = await self.client.txn(compares, puts, [Get(key)])
        if result.succeeded:
            return True
        current = next((r for r in result.responses if not isinstance(r, int)), None)
        return current is not None and bool(current.kvs) and current.kvs[0].value == record

    async def delete_split(self, parent: int, expected_mod_revision: int) -> bool:
        key = self.keys.split(parent)
        result = await self.client.txn(
            [Compare.mod_revision(key, expected_mod_revision)], [Delete(key)], [Get(key)]
        )
        if result.succeeded:
            return True
        current = next((r for r in result.responses if not isinstance(r, int)), None)
        return current is not None and not current.kvs

    # -- changes ----------------------------------------------------------------------------

    def watch(self, start_revision: int) -> AbstractAsyncContextManager[Watch]:
        return self.client.watch(self.keys.root, prefix=True, start_revision=start_revision)


__all__ = ["Coordinator", "EtcdCoordinator", "Membership"]

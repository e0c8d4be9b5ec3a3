"""A simulated etcd: an in-memory model of the etcd v3 API subset silo uses, served over the
simulated network as a host, so the real :class:`silo.cluster.etcd.EtcdClient` and coordinator
run against it unchanged (same method paths, same encoded messages, same status codes).

Modelled (and checked against a real etcd by tests/cluster/test_etcd_conformance.py):

- one global revision (1 for an empty store); every write (put, delete of at least one key, a
  txn that writes, a lease expiry or revoke that deletes keys) advances it by exactly one, and each
  key carries ``create_revision``, ``mod_revision`` and ``version`` (reset by a delete);
- ``Range`` of one key, a ``[key, range_end)`` range or everything from ``key`` (``range_end`` =
  ``b"\\0"``), sorted by key, with ``limit``, ``count``, ``more``, ``keys_only``, ``count_only``;
- ``Put`` (with a lease, ``prev_kv``), ``DeleteRange`` (``prev_kv``);
- ``Txn``: compares on version / create / mod revision / value / lease of a key (a range compare
  needs every key to match; a value compare on a missing key is false, as in etcd), then the
  success or failure ops at one revision, later ops seeing earlier ones; a key written twice is
  INVALID_ARGUMENT "duplicate key";
- leases: ``LeaseGrant`` (TTL raised to ``min_ttl_s``; a requested id that exists is
  FAILED_PRECONDITION), ``LeaseKeepAlive`` (a stream; TTL 0 for an unknown lease),
  ``LeaseRevoke``; a lease not renewed for its TTL on the simulated clock expires and deletes its
  keys in one revision;
- ``Watch`` (a stream, several watchers per stream): from a ``start_revision`` (inclusive; 0 means
  "from the next revision"), the events of each revision in order in one response; a start below
  the retained history is answered ``canceled`` with ``compact_revision``, as etcd does after a
  compaction. History is bounded (``history_revisions``).

Not modelled: historical reads (``RangeRequest.revision``), sorting other than by key, range
filters on revisions, nested txns, ``progress_notify``, watch filters and fragments
(UNIMPLEMENTED or ignored, documented per field below), authentication, compaction requests.

Faults: ``etcd.unavailable`` (a :data:`sim.faults.FAULT_POINTS` rate) answers single calls with
UNAVAILABLE "etcdserver: no leader"; :meth:`EtcdHost.set_unavailable` does it for every call
until switched off (streams stay open but carry nothing new); :meth:`EtcdHost.crash` and
:meth:`EtcdHost.restart` stop and start the host (its data survives, as etcd's WAL does) and, as
a new etcd leader does, a restart gives every lease a fresh TTL. While unavailable or down, leases
do not expire (no leader to revoke them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import betterproto2
import trio
from sortedcontainers import SortedDict

from silo.errors import Code
from silo.pb import etcdserverpb as pb
from silo.pb import mvccpb
from silo.rpc import CallContext, Handler, RpcError, ServerStream, StreamHandler

if TYPE_CHECKING:
    from sim.simulator import Simulator

KV_SERVICE = "etcdserverpb.KV"
LEASE_SERVICE = "etcdserverpb.Lease"
WATCH_SERVICE = "etcdserverpb.Watch"

CLUSTER_ID = 0x51105111
MEMBER_ID = 0x1

MAX_LEASE_TTL_S = 9_000_000_000
"""etcd's MaxLeaseTTL: a larger TTL is rejected."""
MAX_WATCHERS_PER_STREAM = 256
EXPIRY_CHECK_S = 0.5
"""How often expired leases are revoked (etcd checks every 500 ms)."""


@dataclass
class _Key:
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def to_pb(self, key: bytes, *, keys_only: bool = False) -> mvccpb.KeyValue:
        return mvccpb.KeyValue(
            key=key, create_revision=self.create_revision, mod_revision=self.mod_revision,
            version=self.version, value=b"" if keys_only else self.value, lease=self.lease,
        )


@dataclass
class _Lease:
    id: int
    ttl_s: int
    deadline: float
    keys: set[bytes] = field(default_factory=set)


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd's range semantics: ``end`` empty = only ``start``; ``b"\\0"`` = every key >= start."""
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


class EtcdModel:
    """The store: keys, revisions, leases and the event history. Pure state, no I/O; the times
    it takes are simulated seconds (``trio.current_time()`` of the caller)."""

    def __init__(self, *, min_ttl_s: int = 1, history_revisions: int = 10_000,
                 first_lease_id: int = 0x6D0D_0000_0000_0001) -> None:
        self.revision = 1
        self.kv: SortedDict = SortedDict()  # bytes -> _Key
        self.leases: dict[int, _Lease] = {}
        self.min_ttl_s = min_ttl_s
        self.history: deque[tuple[int, list[mvccpb.Event]]] = deque(maxlen=history_revisions)
        self.compact_revision = 0
        self._next_lease = first_lease_id
        self.changed = trio.Event()

    # -- helpers ----------------------------------------------------------------------------

    def header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(
            cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=self.revision, raft_term=2
        )

    def keys_in(self, start: bytes, end: bytes) -> list[bytes]:
        if not end:
            return [start] if start in self.kv else []
        if end == b"\0":
            return list(self.kv.irange(minimum=start))
        return list(self.kv.irange(minimum=start, maximum=end, inclusive=(True, False)))

    def _commit(self, events: list[mvccpb.Event]) -> None:
        if len(self.history) == self.history.maxlen:
            self.compact_revision = self.history[0][0]
        self.history.append((self.revision, events))
        self.changed.set()
        self.changed = trio.Event()

    # -- KV ---------------------------------------------------------------------------------

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        self._check_range(req)
        keys = self.keys_in(req.key, req.range_end)
        count = len(keys)
        shown = keys[: req.limit] if req.limit > 0 else keys
        kvs = [] if req.count_only else [
            self.kv[k].to_pb(k, keys_only=req.keys_only) for k in shown
        ]
        return pb.RangeResponse(
            header=self.header(), kvs=kvs, more=len(shown) < count, count=count
        )

    def _check_range(self, req: pb.RangeRequest) -> None:
        if not req.key:
            raise RpcError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
        if req.revision > 0 and req.revision != self.revision:
            raise RpcError(Code.UNIMPLEMENTED, "sim etcd: historical reads are not modelled")
        if req.sort_target != pb.RangeRequestSortTarget.KEY or (
            req.sort_order == pb.RangeRequestSortOrder.DESCEND
        ):
            raise RpcError(Code.UNIMPLEMENTED, "sim etcd: only ascending key order is modelled")
        if (req.min_mod_revision or req.max_mod_revision or req.min_create_revision
                or req.max_create_revision):
            raise RpcError(Code.UNIMPLEMENTED, "sim etcd: revision filters are not modelled")

    def _check_put(self, req: pb.PutRequest) -> None:
        if not req.key:
            raise RpcError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
        if req.ignore_value or req.ignore_lease:
            raise RpcError(Code.UNIMPLEMENTED, "sim etcd: ignore_value/ignore_lease")
        if req.lease and req.lease not in self.leases:
            raise RpcError(Code.NOT_FOUND, "etcdserver: requested lease not found")

    def _apply_put(self, req: pb.PutRequest, rev: int, events: list[mvccpb.Event]) -> (
        pb.PutResponse
    ):
        old = self.kv.get(req.key)
        prev = old.to_pb(req.key) if old is not None else None
        if old is not None and old.lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(req.key)
        new = _Key(
            value=req.value,
            create_revision=old.create_revision if old is not None else rev,
            mod_revision=rev, version=(old.version if old is not None else 0) + 1,
            lease=req.lease,
        )
        self.kv[req.key] = new
        if req.lease:
            self.leases[req.lease].keys.add(req.key)
        events.append(mvccpb.Event(type=mvccpb.EventEventType.PUT, kv=new.to_pb(req.key)))
        resp = pb.PutResponse(header=pb.ResponseHeader())
        if req.prev_kv and prev is not None:
            resp.prev_kv = prev
        return resp

    def _delete_key(self, key: bytes, rev: int, events: list[mvccpb.Event]) -> mvccpb.KeyValue:
        old = self.kv.pop(key)
        if old.lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        events.append(mvccpb.Event(
            type=mvccpb.EventEventType.DELETE, kv=mvccpb.KeyValue(key=key, mod_revision=rev)
        ))
        return old.to_pb(key)

    def _apply_delete(self, req: pb.DeleteRangeRequest, rev: int,
                      events: list[mvccpb.Event]) -> pb.DeleteRangeResponse:
        keys = self.keys_in(req.key, req.range_end)
        prevs = [self._delete_key(k, rev, events) for k in keys]
        return pb.DeleteRangeResponse(
            header=pb.ResponseHeader(), deleted=len(keys), prev_kvs=prevs if req.prev_kv else []
        )

    def _write(self, apply: Callable[[int, list[mvccpb.Event]], betterproto2.Message]) -> (
        betterproto2.Message
    ):
        """Run ``apply`` at the next revision; the revision is used only if it wrote."""
        events: list[mvccpb.Event] = []
        resp = apply(self.revision + 1, events)
        if events:
            self.revision += 1
            self._commit(events)
        return resp

    def put(self, req: pb.PutRequest) -> pb.PutResponse:
        self._check_put(req)
        resp = self._write(lambda rev, ev: self._apply_put(req, rev, ev))
        assert isinstance(resp, pb.PutResponse)
        resp.header = self.header()
        return resp

    def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        if not req.key:
            raise RpcError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
        resp = self._write(lambda rev, ev: self._apply_delete(req, rev, ev))
        assert isinstance(resp, pb.DeleteRangeResponse)
        resp.header = self.header()
        return resp

    def _compare(self, c: pb.Compare) -> bool:
        keys = self.keys_in(c.key, c.range_end)
        T = pb.CompareCompareTarget
        if not keys:
            if c.target == T.VALUE:
                return False
            return self._compare_kv(c, _Key(b"", 0, 0, 0, 0))
        return all(self._compare_kv(c, self.kv[k]) for k in keys)

    @staticmethod
    def _compare_kv(c: pb.Compare, kv: _Key) -> bool:
        T = pb.CompareCompareTarget
        R = pb.CompareCompareResult
        actual: int | bytes
        wanted: int | bytes
        if c.target == T.VALUE:
            actual, wanted = kv.value, c.value or b""
        elif c.target == T.VERSION:
            actual, wanted = kv.version, c.version or 0
        elif c.target == T.CREATE:
            actual, wanted = kv.create_revision, c.create_revision or 0
        elif c.target == T.MOD:
            actual, wanted = kv.mod_revision, c.mod_revision or 0
        else:
            actual, wanted = kv.lease, c.lease or 0
        if c.result == R.EQUAL:
            return actual == wanted
        if c.result == R.NOT_EQUAL:
            return actual != wanted
        if c.result == R.GREATER:
            return actual > wanted  # type: ignore[operator]
        return actual < wanted  # type: ignore[operator]

    def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        for c in req.compare:
            if not c.key:
                raise RpcError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
        succeeded = all(self._compare(c) for c in req.compare)
        ops = req.success if succeeded else req.failure
        written: set[bytes] = set()
        for op in ops:
            kind, body = betterproto2.which_one_of(op, "request")
            if kind == "request_txn":
                raise RpcError(Code.UNIMPLEMENTED, "sim etcd: nested txns are not modelled")
            # Everything is checked before anything is applied: a txn applies whole or not.
            if kind == "request_range":
                assert isinstance(body, pb.RangeRequest)
                self._check_range(body)
            elif kind == "request_put":
                assert isinstance(body, pb.PutRequest)
                self._check_put(body)
                if body.key in written:
                    raise RpcError(
                        Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
                    )
                written.add(body.key)
            elif kind == "request_delete_range":
                assert isinstance(body, pb.DeleteRangeRequest)
                if not body.key:
                    raise RpcError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
                hit = {k for k in written if _in_range(k, body.key, body.range_end)}
                if hit:
                    raise RpcError(
                        Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
                    )
                written.update(self.keys_in(body.key, body.range_end))

        def apply(rev: int, events: list[mvccpb.Event]) -> pb.TxnResponse:
            responses: list[pb.ResponseOp] = []
            for op in ops:
                kind, body = betterproto2.which_one_of(op, "request")
                if kind == "request_range":
                    assert isinstance(body, pb.RangeRequest)
                    r = self.range(body)
                    r.header = pb.ResponseHeader()
                    responses.append(pb.ResponseOp(response_range=r))
                elif kind == "request_put":
                    assert isinstance(body, pb.PutRequest)
                    responses.append(pb.ResponseOp(
                        response_put=self._apply_put(body, rev, events)
                    ))
                elif kind == "request_delete_range":
                    assert isinstance(body, pb.DeleteRangeRequest)
                    responses.append(pb.ResponseOp(
                        response_delete_range=self._apply_delete(body, rev, events)
                    ))
            return pb.TxnResponse(succeeded=succeeded, responses=responses)

        resp = self._write(apply)
        assert isinstance(resp, pb.TxnResponse)
        resp.header = self.header()
        return resp

    # -- leases -----------------------------------------------------------------------------

    def grant(self, req: pb.LeaseGrantRequest, now: float) -> pb.LeaseGrantResponse:
        if req.ttl > MAX_LEASE_TTL_S:
            raise RpcError(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")
        if req.id < 0:
            raise RpcError(Code.INVALID_ARGUMENT, "etcdserver: negative lease id")
        if req.id:
            if req.id in self.leases:
                raise RpcError(Code.FAILED_PRECONDITION, "etcdserver: lease already exists")
            lease_id = req.id
        else:
            while self._next_lease in self.leases:
                self._next_lease += 1
            lease_id = self._next_lease
            self._next_lease += 1
        ttl = max(req.ttl, self.min_ttl_s)
        self.leases[lease_id] = _Lease(lease_id, ttl, now + ttl)
        return pb.LeaseGrantResponse(header=self.header(), id=lease_id, ttl=ttl)

    def keepalive(self, req: pb.LeaseKeepAliveRequest, now: float) -> pb.LeaseKeepAliveResponse:
        lease = self.leases.get(req.id)
        if lease is None:
            return pb.LeaseKeepAliveResponse(header=self.header(), id=req.id, ttl=0)
        lease.deadline = now + lease.ttl_s
        return pb.LeaseKeepAliveResponse(header=self.header(), id=req.id, ttl=lease.ttl_s)

    def revoke(self, lease_id: int) -> pb.LeaseRevokeResponse:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            raise RpcError(Code.NOT_FOUND, "etcdserver: requested lease not found")

        def apply(rev: int, events: list[mvccpb.Event]) -> pb.LeaseRevokeResponse:
            for key in sorted(lease.keys):
                if key in self.kv:
                    self._delete_key(key, rev, events)
            return pb.LeaseRevokeResponse()

        resp = self._write(apply)
        assert isinstance(resp, pb.LeaseRevokeResponse)
        resp.header = self.header()
        return resp

    def expire(self, now: float) -> list[int]:
        """Revoke every lease whose deadline has passed; their ids, in id order."""
        gone = sorted(i for i, lease in self.leases.items() if lease.deadline <= now)
        for lease_id in gone:
            self.revoke(lease_id)
        return gone

    def refresh_leases(self, now: float) -> None:
        """A new leader: every lease gets a full TTL from now (etcd's lessor Promote)."""
        for lease in self.leases.values():
            lease.deadline = max(lease.deadline, now + lease.ttl_s)

    # -- watch history ----------------------------------------------------------------------

    def events_since(self, start: bytes, end: bytes, from_rev: int) -> list[
        tuple[int, list[mvccpb.Event]]
    ]:
        """Matching events of revisions >= ``from_rev``, per revision in order."""
        out = []
        for rev, events in self.history:
            if rev < from_rev:
                continue
            hit = [e for e in events if _in_range(e.kv.key, start, end)]
            if hit:
                out.append((rev, hit))
        return out


class EtcdHost:
    """The simulated etcd host: an :class:`EtcdModel` behind the simulated network at
    ``address`` (``"{name}:2379"``). Implements :class:`sim.network.Server`."""

    def __init__(self, sim: Simulator, name: str = "etcd", *, min_ttl_s: int = 1,
                 history_revisions: int = 10_000) -> None:
        self.sim = sim
        self.name = name
        self.address = f"{name}:2379"
        self.model = EtcdModel(min_ttl_s=min_ttl_s, history_revisions=history_revisions)
        rng = sim.random.stream(f"host/{name}")
        self.rng = rng
        self.serving = False
        self.unavailable = False
        self.generation = 0
        self.handler_nursery: trio.Nursery | None = None
        self.handlers: dict[str, Handler] = {
            f"/{KV_SERVICE}/Range": self._unary(pb.RangeRequest, self._range),
            f"/{KV_SERVICE}/Put": self._unary(pb.PutRequest, self._put),
            f"/{KV_SERVICE}/DeleteRange": self._unary(pb.DeleteRangeRequest, self._delete),
            f"/{KV_SERVICE}/Txn": self._unary(pb.TxnRequest, self._txn),
            f"/{LEASE_SERVICE}/LeaseGrant": self._unary(pb.LeaseGrantRequest, self._grant),
            f"/{LEASE_SERVICE}/LeaseRevoke": self._unary(pb.LeaseRevokeRequest, self._revoke),
        }
        self.stream_handlers: dict[str, StreamHandler] = {
            f"/{LEASE_SERVICE}/LeaseKeepAlive": self._keepalive_stream,
            f"/{WATCH_SERVICE}/Watch": self._watch_stream,
        }
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._stopped.set()
        sim.net.register(self)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving (a restart keeps the data and refreshes every lease's TTL)."""
        if self.serving:
            return
        await self._stopped.wait()
        self.generation += 1
        self.model.refresh_leases(trio.current_time())
        self.sim.trace.record(f"host {self.name} start gen={self.generation}")
        assert self.sim.nursery is not None
        await self.sim.nursery.start(self._run)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        self._stopped = trio.Event()
        self._scope = trio.CancelScope()
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self.handler_nursery = nursery
                    self.serving = True
                    nursery.start_soon(self._expiry_loop)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self.serving = False
            self.handler_nursery = None
            self._stopped.set()

    def crash(self) -> None:
        """Stop at once: calls and streams in flight fail with UNAVAILABLE; data is kept."""
        if not self.serving:
            return
        self.serving = False
        self.sim.trace.record(f"host {self.name} crash gen={self.generation}")
        self.sim.net.host_down(self)
        assert self._scope is not None
        self._scope.cancel()

    async def restart(self) -> None:
        self.crash()
        await self.start()

    def set_unavailable(self, unavailable: bool) -> None:
        """While set, every call fails with UNAVAILABLE and leases do not expire; when cleared,
        every lease gets a full TTL (a new leader was elected)."""
        if self.unavailable and not unavailable:
            self.model.refresh_leases(trio.current_time())
        self.unavailable = unavailable
        self.sim.trace.record(f"host {self.name} unavailable={unavailable}")

    async def _expiry_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_CHECK_S)
            if self.unavailable:
                continue
            for lease_id in self.model.expire(trio.current_time()):
                self.sim.trace.record(f"etcd lease {lease_id:x} expired")

    # -- serving ----------------------------------------------------------------------------

    def _check_available(self, method: str) -> None:
        if self.unavailable or self.sim.board.roll(self.rng, "etcd.unavailable", method):
            raise RpcError(Code.UNAVAILABLE, "etcdserver: no leader")

    def _unary(
        self, request_type: type[betterproto2.Message],
        fn: Callable[[betterproto2.Message], betterproto2.Message],
    ) -> Handler:
        async def handler(request: bytes, ctx: CallContext) -> bytes:
            await trio.lowlevel.checkpoint()
            self._check_available(ctx.method)
            try:
                message = request_type.parse(request)
            except Exception as exc:  # a malformed message is the caller's fault
                raise RpcError(Code.INVALID_ARGUMENT, f"bad request: {exc}") from None
            return bytes(fn(message))

        return handler

    def _range(self, req: betterproto2.Message) -> betterproto2.Message:
        assert isinstance(req, pb.RangeRequest)
        return self.model.range(req)

    def _put(self, req: betterproto2.Message) -> betterproto2.Message:
        assert isinstance(req, pb.PutRequest)
        return self.model.put(req)

    def _delete(self, req: betterproto2.Message) -> betterproto2.Message:
        assert isinstance(req, pb.DeleteRangeRequest)
        return self.model.delete_range(req)

    def _txn(self, req: betterproto2.Message) -> betterproto2.Message:
        assert isinstance(req, pb.TxnRequest)
        return self.model.txn(req)

    def _grant(self, req: betterproto2.Message) -> betterproto2.Message:
        assert isinstance(req, pb.LeaseGrantRequest)
        return self.model.grant(req, trio.current_time())

    def _revoke(self, req: betterproto2.Message) -> betterproto2.Message:
        assert isinstance(req, pb.LeaseRevokeRequest)
        return self.model.revoke(req.id)

    async def _keepalive_stream(self, stream: ServerStream, ctx: CallContext) -> None:
        """One response per request, until the client half-closes."""
        while True:
            data = await stream.recv()
            if data is None:
                return
            self._check_available(ctx.method)
            req = pb.LeaseKeepAliveRequest.parse(data)
            await stream.send(bytes(self.model.keepalive(req, trio.current_time())))

    async def _watch_stream(self, stream: ServerStream, ctx: CallContext) -> None:
        """Creates and cancels watchers as requested; each watcher sends its events in revision
        order. The stream lives on after the client half-closes, as in etcd."""
        self._check_available(ctx.method)
        watchers: dict[int, trio.CancelScope] = {}
        send_lock = trio.Lock()
        next_id = 0

        async def send(resp: pb.WatchResponse) -> None:
            async with send_lock:
                await stream.send(bytes(resp))

        async with trio.open_nursery() as nursery:
            while True:
                data = await stream.recv()
                if data is None:
                    await trio.sleep_forever()
                req = pb.WatchRequest.parse(data)
                kind, body = betterproto2.which_one_of(req, "request_union")
                if kind == "create_request":
                    assert isinstance(body, pb.WatchCreateRequest)
                    if body.watch_id:
                        watch_id = body.watch_id
                        if watch_id in watchers:
                            await send(pb.WatchResponse(
                                header=self.model.header(), watch_id=watch_id, created=True,
                                canceled=True, cancel_reason="etcdserver: duplicate watch ID",
                            ))
                            continue
                    else:
                        while next_id in watchers:
                            next_id += 1
                        watch_id = next_id
                        next_id += 1
                    if len(watchers) >= MAX_WATCHERS_PER_STREAM:
                        await send(pb.WatchResponse(
                            header=self.model.header(), watch_id=watch_id, created=True,
                            canceled=True, cancel_reason="sim etcd: too many watchers",
                        ))
                        continue
                    scope = trio.CancelScope()
                    watchers[watch_id] = scope
                    await send(pb.WatchResponse(
                        header=self.model.header(), watch_id=watch_id, created=True
                    ))
                    start = body.start_revision or self.model.revision + 1
                    nursery.start_soon(self._watcher, scope, send, watch_id, body, start)
                elif kind == "cancel_request":
                    assert isinstance(body, pb.WatchCancelRequest)
                    scope = watchers.pop(body.watch_id, None)
                    if scope is not None:
                        scope.cancel()
                        await send(pb.WatchResponse(
                            header=self.model.header(), watch_id=body.watch_id, canceled=True
                        ))
                # progress requests: not modelled (ignored)

    async def _watcher(
        self, scope: trio.CancelScope, send: Callable[[pb.WatchResponse], Awaitable[None]],
        watch_id: int, req: pb.WatchCreateRequest, start: int,
    ) -> None:
        with scope:
            next_rev = start
            while True:
                while self.unavailable:
                    await trio.sleep(EXPIRY_CHECK_S)
                changed = self.model.changed
                upto = self.model.revision
                if next_rev <= self.model.compact_revision:
                    await send(pb.WatchResponse(
                        header=self.model.header(), watch_id=watch_id, canceled=True,
                        compact_revision=self.model.compact_revision,
                        cancel_reason="etcdserver: mvcc: required revision has been compacted",
                    ))
                    return
                # Computed at once (no await), so it holds every matching event up to ``upto``.
                pending = self.model.events_since(req.key, req.range_end, next_rev)
                for rev, events in pending:
                    header = self.model.header()
                    header.revision = rev
                    await send(pb.WatchResponse(header=header, watch_id=watch_id, events=events))
                next_rev = max(next_rev, upto + 1)
                if self.model.revision == upto:
                    await changed.wait()


__all__ = ["EtcdHost", "EtcdModel"]

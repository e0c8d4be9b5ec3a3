"""An etcd v3 client over silo's rpc seam: the subset of KV, Lease and Watch that the cluster
coordinator needs, with silo's errors and bounded retries.

Everything goes through one :class:`~silo.rpc.StreamingChannel` (grpclib in production, the
simulated network under the simulator), so this module does no I/O of its own; sleeping and
deadlines use trio, whose clock is the runtime's (a ``MockClock`` in the simulator).

Calls and their errors:

- ``Range``/``Put``/``DeleteRange``/``Txn``/``LeaseGrant``/``LeaseRevoke`` are unary calls, each
  with a ``call_timeout_s`` deadline. A call failing with ``UNAVAILABLE`` or
  ``DEADLINE_EXCEEDED`` is retried up to ``attempts`` times with full-jitter exponential backoff;
  then :class:`~silo.errors.Unavailable` ("etcd ... unavailable") is raised. Other statuses raise
  the matching :class:`~silo.errors.SiloError` at once (an unknown lease:
  :class:`LeaseNotFound`, a NOT_FOUND).
- A retried write may have been applied by the failed attempt: callers build writes whose effect
  is the same when applied twice and whose outcome they can recognise (put-if-absent of the
  caller's own value, delete-if-value, CAS to a value the caller then reads back); see
  :mod:`silo.cluster.coordinator`.

Streams (Watch, LeaseKeepAlive) and why keepalive is a one-message stream: the seam gained a
minimal bidirectional stream (:class:`~silo.rpc.ClientStream`) because a watch is inherently a
server-push stream that no unary exchange can replace. Keepalive, however, uses a *fresh stream
per renewal* (send one request, half-close, read one response): etcd answers each request on a
LeaseKeepAlive stream as it arrives and ends the call when the client half-closes, so a
one-message stream is a complete, independent request/response. Each renewal then has its own
deadline, a broken or stalled stream costs exactly one renewal attempt, and there is no
long-lived stream state to resynchronise, which is what the fail-closed accounting in
:class:`LeaseKeeper` relies on.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import betterproto2
import trio

from silo.errors import Code, InvalidArgument, NotFound, SiloError, Unavailable
from silo.pb import etcdserverpb as pb
from silo.pb import mvccpb
from silo.rpc import ClientStream, RpcError, StreamingChannel
from silo.runtime.faults import NO_FAULTS, Faults

__all__ = [
    "CompareOp",
    "CompareTarget",
    "Compare",
    "Delete",
    "EtcdClient",
    "EtcdRetry",
    "EventType",
    "Get",
    "KeyValue",
    "LeaseKeeper",
    "LeaseNotFound",
    "Put",
    "RangeResult",
    "TxnResult",
    "Watch",
    "WatchCompacted",
    "WatchEvent",
    "prefix_end",
]

KV = "/etcdserverpb.KV"
LEASE = "/etcdserverpb.Lease"
WATCH = "/etcdserverpb.Watch/Watch"

MAX_KEY_BYTES = 1536
"""Longest key silo writes (etcd has no key limit below its request limit; ours is deliberate)."""
MAX_VALUE_BYTES = 1 << 20
"""Largest value silo writes (etcd's default request limit is 1.5 MiB)."""
MAX_LEASE_TTL_S = 3600
MAX_RANGE_LIMIT = 100_000
WATCH_BUFFER = 64
"""Watch batches buffered between the stream and the consumer (the stream waits when full)."""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` covering every key that starts with ``prefix`` (etcd's "prefix+1")."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class LeaseNotFound(NotFound):
    """The lease does not exist (it expired or was revoked)."""


class WatchCompacted(SiloError):
    """The watch's start revision is older than etcd's retained history: re-read and watch from
    the revision of the read (``compact_revision`` is the oldest revision no longer kept)."""

    code = Code.OUT_OF_RANGE

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd history compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


# -- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: mvccpb.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int
    """The store revision the range was read at."""
    more: bool
    count: int


class CompareTarget(Enum):
    VERSION = pb.CompareCompareTarget.VERSION
    CREATE = pb.CompareCompareTarget.CREATE
    MOD = pb.CompareCompareTarget.MOD
    VALUE = pb.CompareCompareTarget.VALUE
    LEASE = pb.CompareCompareTarget.LEASE


class CompareOp(Enum):
    EQUAL = pb.CompareCompareResult.EQUAL
    NOT_EQUAL = pb.CompareCompareResult.NOT_EQUAL
    GREATER = pb.CompareCompareResult.GREATER
    LESS = pb.CompareCompareResult.LESS


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn predicate on ``key``. A missing key has version, create and mod revision 0 and
    lease 0; a VALUE compare on a missing key is false."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: int | bytes

    @classmethod
    def absent(cls, key: bytes) -> Compare:
        return cls(key, CompareTarget.CREATE, CompareOp.EQUAL, 0)

    @classmethod
    def mod_revision(cls, key: bytes, revision: int) -> Compare:
        """``key`` was last modified at ``revision`` (0: the key does not exist)."""
        return cls(key, CompareTarget.MOD, CompareOp.EQUAL, revision)

    @classmethod
    def create_revision(cls, key: bytes, revision: int) -> Compare:
        return cls(key, CompareTarget.CREATE, CompareOp.EQUAL, revision)

    @classmethod
    def value_equals(cls, key: bytes, value: bytes) -> Compare:
        return cls(key, CompareTarget.VALUE, CompareOp.EQUAL, value)

    def to_pb(self) -> pb.Compare:
        c = pb.Compare(result=self.op.value, target=self.target.value, key=self.key)
        if self.target is CompareTarget.VALUE:
            assert isinstance(self.operand, bytes)
            c.value = self.operand
        else:
            assert isinstance(self.operand, int)
            if self.target is CompareTarget.VERSION:
                c.version = self.operand
            elif self.target is CompareTarget.CREATE:
                c.create_revision = self.operand
            elif self.target is CompareTarget.MOD:
                c.mod_revision = self.operand
            else:
                c.lease = self.operand
        return c


@dataclass(frozen=True, slots=True)
class Get:
    """Txn op: read ``key`` (with ``prefix``: every key starting with it)."""

    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False


TxnOp = Get | Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    """The store revision after the txn (its own revision if it wrote)."""
    responses: tuple[RangeResult | int, ...]
    """Per op: a :class:`RangeResult` for a Get, the revision for a Put, the number of keys
    deleted for a Delete."""


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: bytes
    value: bytes
    """The new value (empty for a delete)."""
    revision: int
    """The revision of the change (a deleted key's mod revision is the revision of the delete)."""
    create_revision: int
    version: int


@dataclass(frozen=True, slots=True)
class EtcdRetry:
    attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    call_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 100:
            raise ValueError(f"EtcdRetry.attempts {self.attempts} is outside 1..100")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s <= 60:
            raise ValueError("EtcdRetry backoffs must satisfy 0 < initial <= max <= 60 seconds")
        if not 0 < self.call_timeout_s <= 60:
            raise ValueError(f"EtcdRetry.call_timeout_s {self.call_timeout_s} is outside (0, 60]")


def _check_key(key: bytes) -> None:
    if not key:
        raise InvalidArgument("etcd key must not be empty")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(f"etcd key of {len(key)} bytes exceeds 'max_key_bytes' "
                              f"{MAX_KEY_BYTES}")


def _check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidArgument(f"etcd value of {len(value)} bytes exceeds 'max_value_bytes' "
                              f"{MAX_VALUE_BYTES}")


def _range_request(key: bytes, prefix: bool, limit: int = 0) -> pb.RangeRequest:
    _check_key(key)
    if not 0 <= limit <= MAX_RANGE_LIMIT:
        raise InvalidArgument(f"range limit {limit} is outside 0..{MAX_RANGE_LIMIT}")
    return pb.RangeRequest(key=key, range_end=prefix_end(key) if prefix else b"", limit=limit)


def _range_result(resp: pb.RangeResponse, revision: int) -> RangeResult:
    return RangeResult(
        tuple(KeyValue.from_pb(kv) for kv in resp.kvs), revision, resp.more, resp.count
    )


def _op_pb(op: TxnOp) -> pb.RequestOp:
    if isinstance(op, Get):
        return pb.RequestOp(request_range=_range_request(op.key, op.prefix))
    if isinstance(op, Put):
        _check_key(op.key)
        _check_value(op.value)
        return pb.RequestOp(request_put=pb.PutRequest(key=op.key, value=op.value, lease=op.lease))
    _check_key(op.key)
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
        key=op.key, range_end=prefix_end(op.key) if op.prefix else b""
    ))


def _header_revision(message: betterproto2.Message) -> int:
    header = getattr(message, "header", None)
    return int(header.revision) if header is not None else 0


M = TypeVar("M", bound=betterproto2.Message)


class EtcdClient:
    """etcd KV, Lease and Watch over one channel to one etcd endpoint.

    ``rng`` (seeded from the runtime) draws backoff jitter. The client holds no state besides
    the channel; it is safe to use from several tasks at once.
    """

    def __init__(
        self, channel: StreamingChannel, *, rng: random.Random, retry: EtcdRetry | None = None,
        address: str = "etcd", faults: Faults = NO_FAULTS,
    ) -> None:
        self.channel = channel
        self.faults = faults
        """Planted simulator mutations (none in production)."""
        self.retry = retry or EtcdRetry()
        self.address = address
        self._rng = rng

    # -- plumbing ---------------------------------------------------------------------------

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
        cap = min(self.retry.max_backoff_s, self.retry.initial_backoff_s * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)

    async def _call(self, method: str, request: betterproto2.Message, reply: type[M]) -> M:
        data = bytes(request)
        last: RpcError | None = None
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1:
                await trio.sleep(self.backoff_s(attempt - 1))
            try:
                raw = await self.channel.call(method, data, timeout=self.retry.call_timeout_s)
            except RpcError as exc:
                if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                    last = exc
                    continue
                raise _silo_error(exc) from None
            return reply.parse(raw)
        assert last is not None
        raise Unavailable(
            f"etcd at {self.address} unavailable after {self.retry.attempts} attempts "
            f"({method.rsplit('/', 1)[-1]}): {last}"
        )

    # -- KV ---------------------------------------------------------------------------------

    async def range(self, key: bytes, *, prefix: bool = False, limit: int = 0) -> RangeResult:
        """``key`` alone, or with ``prefix`` every key starting with it, in key order."""
        resp = await self._call(f"{KV}/Range", _range_request(key, prefix, limit),
                                pb.RangeResponse)
        return _range_result(resp, _header_revision(resp))

    async def get(self, key: bytes) -> KeyValue | None:
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; the revision of the write. An unknown lease: :class:`LeaseNotFound`."""
        _check_key(key)
        _check_value(value)
        resp = await self._call(f"{KV}/Put", pb.PutRequest(key=key, value=value, lease=lease),
                                pb.PutResponse)
        return _header_revision(resp)

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key with the prefix); how many keys were deleted."""
        _check_key(key)
        req = pb.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        resp = await self._call(f"{KV}/DeleteRange", req, pb.DeleteRangeResponse)
        return int(resp.deleted)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds, run ``success``, else ``failure``, atomically at one
        revision. At most 128 compares and 128 ops per branch (etcd's default max-txn-ops)."""
        if len(compares) > 128 or len(success) > 128 or len(failure) > 128:
            raise InvalidArgument("a txn takes at most 128 compares and 128 ops per branch "
                                  "('max_txn_ops' 128)")
        for c in compares:
            _check_key(c.key)
        req = pb.TxnRequest(
            compare=[c.to_pb() for c in compares],
            success=[_op_pb(op) for op in success], failure=[_op_pb(op) for op in failure],
        )
        resp = await self._call(f"{KV}/Txn", req, pb.TxnResponse)
        revision = _header_revision(resp)
        out: list[RangeResult | int] = []
        for r in resp.responses:
            kind, body = betterproto2.which_one_of(r, "response")
            if kind == "response_range":
                assert isinstance(body, pb.RangeResponse)
                out.append(_range_result(body, revision))
            elif kind == "response_put":
                out.append(revision)
            elif kind == "response_delete_range":
                assert isinstance(body, pb.DeleteRangeResponse)
                out.append(int(body.deleted))
        return TxnResult(bool(resp.succeeded), revision, tuple(out))

    # -- leases -----------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: ``(lease_id, ttl_s)`` (etcd may raise the TTL to its minimum)."""
        if not 1 <= ttl_s <= MAX_LEASE_TTL_S:
            raise InvalidArgument(f"lease 'ttl_s' {ttl_s} is outside 1..{MAX_LEASE_TTL_S}")
        resp = await self._call(f"{LEASE}/LeaseGrant", pb.LeaseGrantRequest(ttl=ttl_s),
                                pb.LeaseGrantResponse)
        if resp.error:
            raise Unavailable(f"etcd refused the lease: {resp.error}")
        return int(resp.id), int(resp.ttl)

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys. Unknown lease: :class:`LeaseNotFound`."""
        await self._call(f"{LEASE}/LeaseRevoke", pb.LeaseRevokeRequest(id=lease_id),
                         pb.LeaseRevokeResponse)

    async def keepalive_once(self, lease_id: int, *, timeout_s: float) -> int:
        """Renew the lease once: its TTL in seconds, 0 if it no longer exists. One
        LeaseKeepAlive stream carrying one request and one response (see the module doc).
        Raises :class:`RpcError` (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``...) without retrying."""
        stream = await self.channel.open_stream(f"{LEASE}/LeaseKeepAlive")
        try:
            with trio.move_on_after(timeout_s):
                await stream.send(bytes(pb.LeaseKeepAliveRequest(id=lease_id)))
                await stream.close_send()
                raw = await stream.recv()
                if raw is None:
                    raise RpcError(Code.UNAVAILABLE, "keepalive stream ended without a response")
                return int(pb.LeaseKeepAliveResponse.parse(raw).ttl)
            raise RpcError(Code.DEADLINE_EXCEEDED, f"keepalive got no answer in {timeout_s}s")
        finally:
            await stream.aclose()

    @asynccontextmanager
    async def keep_alive(
        self, lease_id: int, ttl_s: int, *, granted_at: float | None = None
    ) -> AsyncIterator[LeaseKeeper]:
        """Keep ``lease_id`` alive in the background while the block runs; the
        :class:`LeaseKeeper` reports when it is lost. ``granted_at``: ``trio.current_time()``
        just before the grant (or last renewal) was sent; default now. Leaving the block stops
        renewing (it does not revoke)."""
        keeper = LeaseKeeper(self, lease_id, ttl_s, granted_at=granted_at)
        with _unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keeper.run)
                try:
                    yield keeper
                finally:
                    nursery.cancel_scope.cancel()

    # -- watch ------------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, key: bytes, *, prefix: bool = False, start_revision: int = 0,
        max_reconnects: int = 20,
    ) -> AsyncIterator[Watch]:
        """Watch ``key`` (or a prefix) from ``start_revision`` (inclusive; 0: changes after
        now). Iterate the :class:`Watch` for batches of events, one revision per batch, in
        revision order, each revision once, across reconnects."""
        _check_key(key)
        w = Watch(self, key, prefix_end(key) if prefix else b"", start_revision, max_reconnects)
        with _unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(w._run)
                try:
                    yield w
                finally:
                    nursery.cancel_scope.cancel()


@contextmanager
def _unwrapped() -> Iterator[None]:
    """Let the one exception of a background-task nursery (the caller's own, raised in the
    ``async with`` body) propagate as itself rather than inside an exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if len(leaves) == 1 and len(list(_leaves(group))) == 1:
            raise leaves[0] from None
        raise


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


def _silo_error(exc: RpcError) -> SiloError:
    if exc.code == Code.NOT_FOUND and "lease not found" in exc.message:
        return LeaseNotFound(f"etcd: {exc.message}")
    err = exc.to_silo_error()
    err.message = f"etcd: {exc.message}"
    return err


class LeaseKeeper:
    """Renews one lease every ``ttl/3`` seconds and reports its loss, failing closed.

    The lease is known alive only until ``sent + ttl`` of the last renewal etcd confirmed
    (``sent``: when that request left, so the estimate never runs past etcd's own deadline). A
    renewal that fails is retried with backoff; :attr:`lost` is set, and renewing stops, as soon
    as etcd says the lease is gone (TTL 0) or the known-alive time, less a safety ``margin``
    (a tenth of the TTL, at least 100 ms), has run out without a confirmed renewal. A node whose
    lease is lost must stop acting on it at once; it may really still exist on etcd, but nothing
    proves it any more.
    """

    def __init__(
        self, client: EtcdClient, lease_id: int, ttl_s: int, *, granted_at: float | None = None
    ) -> None:
        if ttl_s < 1:
            raise InvalidArgument(f"lease 'ttl_s' {ttl_s} must be at least 1")
        self.client = client
        self.lease_id = lease_id
        self.ttl_s = ttl_s
        self.margin_s = max(0.1, ttl_s / 10)
        start = trio.current_time() if granted_at is None else granted_at
        self.known_alive_until = start + ttl_s
        self.lost = trio.Event()
        self.loss_reason = ""
        self.renewals = 0

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and trio.current_time() < self.safe_until

    @property
    def safe_until(self) -> float:
        return self.known_alive_until - self.margin_s

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.loss_reason = reason
            self.lost.set()

    async def run(self) -> None:
        interval = self.ttl_s / 3
        failures = 0
        with trio.move_on_at(self.safe_until) as guard:
            while True:
                if failures == 0:
                    await trio.sleep(interval)
                else:
                    await trio.sleep(min(self.client.backoff_s(failures), interval))
                sent = trio.current_time()
                timeout = max(0.05, min(interval, self.safe_until - sent))
                try:
                    ttl = await self.client.keepalive_once(self.lease_id, timeout_s=timeout)
                except RpcError as exc:
                    failures += 1
                    self.loss_reason = f"last renewal failed: {exc}"
                    continue
                if ttl <= 0:
                    self._lose(f"etcd says lease {self.lease_id:x} no longer exists")
                    return
                failures = 0
                self.renewals += 1
                if self.client.faults.mutation("trust-lease-past-ttl"):
                    ttl *= 2  # planted bug for the simulator: a renewal trusted for two TTLs
                self.known_alive_until = max(self.known_alive_until, sent + ttl)
                guard.deadline = self.safe_until
        if guard.cancelled_caught:
            self._lose(
                f"lease {self.lease_id:x} not renewed in time ({self.loss_reason or 'no answer'})"
            )


class Watch:
    """Batches of :class:`WatchEvent` from one etcd watch, resumed after a broken stream from
    the revision after the last one delivered. Iteration raises :class:`WatchCompacted` when
    etcd no longer has the revisions needed, and :class:`~silo.errors.Unavailable` after
    ``max_reconnects`` consecutive failed reconnects."""

    def __init__(self, client: EtcdClient, key: bytes, range_end: bytes, start_revision: int,
                 max_reconnects: int) -> None:
        self._client = client
        self._key = key
        self._range_end = range_end
        self.next_revision = start_revision
        """The first revision not yet delivered (0 until the first stream says where "now" is)."""
        self._max_reconnects = max_reconnects
        self._send, self._recv = trio.open_memory_channel[
            tuple[int, tuple[WatchEvent, ...]] | SiloError
        ](WATCH_BUFFER)
        self.created = trio.Event()
        """Set once the first stream is established (events after this are seen)."""
        self._failures = 0

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> tuple[int, tuple[WatchEvent, ...]]:
        """``(revision, events)`` of the next revision with matching events."""
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, SiloError):
            raise item
        return item

    async def _run(self) -> None:
        last_error = ""
        async with self._send:
            while True:
                if self._failures:
                    if self._failures > self._max_reconnects:
                        await self._send.send(Unavailable(
                            f"etcd watch lost after {self._max_reconnects} reconnects: "
                            f"{last_error}"
                        ))
                        return
                    await trio.sleep(self._client.backoff_s(self._failures))
                try:
                    await self._stream()
                except _Compacted as exc:
                    await self._send.send(WatchCompacted(exc.revision))
                    return
                except RpcError as exc:
                    last_error = str(exc)
                self._failures += 1

    async def _stream(self) -> None:
        stream = await self._client.channel.open_stream(WATCH)
        try:
            create = pb.WatchCreateRequest(
                key=self._key, range_end=self._range_end, start_revision=self.next_revision
            )
            timeout = self._client.retry.call_timeout_s
            first: pb.WatchResponse | None = None
            with trio.move_on_after(timeout):
                await stream.send(bytes(pb.WatchRequest(create_request=create)))
                first = await _recv_watch(stream)
            if first is None:
                raise RpcError(Code.DEADLINE_EXCEEDED, f"watch not created within {timeout}s")
            if first.canceled:
                if first.compact_revision:
                    raise _Compacted(first.compact_revision)
                raise RpcError(Code.UNAVAILABLE, f"watch refused: {first.cancel_reason}")
            if self.next_revision == 0:
                self.next_revision = _header_revision(first) + 1
            self._failures = 0
            self.created.set()
            while True:
                resp = await _recv_watch(stream)
                if resp is None:
                    raise RpcError(Code.UNAVAILABLE, "watch stream ended")
                if resp.canceled:
                    if resp.compact_revision:
                        raise _Compacted(resp.compact_revision)
                    raise RpcError(Code.UNAVAILABLE, f"watch canceled: {resp.cancel_reason}")
                await self._deliver(resp.events)
        finally:
            await stream.aclose()

    async def _deliver(self, events: Sequence[mvccpb.Event]) -> None:
        by_revision: dict[int, list[WatchEvent]] = {}
        for e in events:
            kind = EventType.DELETE if e.type == mvccpb.EventEventType.DELETE else EventType.PUT
            kv = e.kv
            by_revision.setdefault(kv.mod_revision, []).append(WatchEvent(
                kind, kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version
            ))
        for revision in sorted(by_revision):
            if revision < self.next_revision:
                continue  # seen before a reconnect
            await self._send.send((revision, tuple(by_revision[revision])))
            self.next_revision = revision + 1


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        self.revision = revision


async def _recv_watch(stream: ClientStream) -> pb.WatchResponse | None:
    raw = await stream.recv()
    return None if raw is None else pb.WatchResponse.parse(raw)


"""The generated grpclib stubs and server bases in silo/transport/stubs/ send and decode the one
set of message classes in silo/pb/ (the ones the simulator and the services use), over real TCP
on 127.0.0.1."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import betterproto2
import grpclib.client
import grpclib.server
import pytest
import trio_asyncio
from grpclib.exceptions import GRPCError

import silo.pb.etcdserverpb
import silo.pb.mvccpb
import silo.pb.silo.v1
from silo.errors import Code, NotFound
from silo.pb import etcdserverpb as etcd
from silo.pb import mvccpb
from silo.pb.silo import v1 as pb
from silo.rpc import CallContext, method_path
from silo.transport.aio import open_asyncio_loop
from silo.transport.grpc import parse_address
from silo.transport.stubs import etcdserverpb as etcd_stubs
from silo.transport.stubs import silo_v1
from tests.transport.support import serving

MESSAGE_MODULES = (silo.pb.silo.v1, silo.pb.etcdserverpb, silo.pb.mvccpb)
SERVICE_BASES = (silo_v1.SiloBase, etcd_stubs.KvBase, etcd_stubs.LeaseBase, etcd_stubs.WatchBase)


def _mapping(base: type[betterproto2.grpclib.ServiceBase]) -> dict[str, Any]:
    return type("Servicer", (base,), {})().__mapping__()


def test_lease_tasks_handler_decodes_into_the_pb_classes() -> None:
    handler = _mapping(silo_v1.SiloBase)["/silo.v1.Silo/LeaseTasks"]
    assert handler.request_type is pb.LeaseTasksRequest
    assert handler.reply_type is pb.LeaseTasksResponse
    decoded = handler.reply_type.parse(bytes(pb.LeaseTasksResponse(tasks=[pb.Task(task_id="t1")])))
    assert type(decoded.tasks[0]) is silo.pb.silo.v1.Task


@pytest.mark.parametrize("base", SERVICE_BASES, ids=lambda b: b.__name__)
def test_every_service_method_uses_the_pb_classes(base: type) -> None:
    mapping = _mapping(base)
    assert mapping
    owners = {module.__name__: module for module in MESSAGE_MODULES}
    for path, handler in mapping.items():
        for cls in (handler.request_type, handler.reply_type):
            assert cls.__module__ in owners, (path, cls)
            assert getattr(owners[cls.__module__], cls.__name__) is cls, (path, cls)


def test_no_message_class_is_defined_outside_silo_pb() -> None:
    for module in (silo_v1, etcd_stubs):
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, betterproto2.Message):
                assert value.__module__.startswith("silo.pb."), (module.__name__, name)


async def test_silo_stub_calls_grpc_server_and_decodes_into_the_pb_classes() -> None:
    """A betterproto2/grpclib stub (ProtoCodec, message classes) talks to GrpcServer."""

    async def lease_tasks(request: bytes, ctx: CallContext) -> bytes:
        req = pb.LeaseTasksRequest.parse(request)
        if req.worker_id == "missing":
            raise NotFound("no such worker", metadata={"silo-shard-owner": "127.0.0.1:9"})
        return bytes(pb.LeaseTasksResponse(tasks=[pb.Task(task_id=f"task-of-{req.worker_id}")]))

    async with serving({method_path("LeaseTasks"): lease_tasks}, token="tok") as (_, address):
        host, port = parse_address(address)

        async def use_stub(worker_id: str) -> pb.LeaseTasksResponse:
            channel = grpclib.client.Channel(host, port)
            try:
                stub = silo_v1.SiloStub(channel, metadata={"authorization": "Bearer tok"})
                return await stub.lease_tasks(pb.LeaseTasksRequest(worker_id=worker_id), timeout=5)
            finally:
                channel.close()

        reply = await trio_asyncio.aio_as_trio(use_stub)("w1")
        assert reply == pb.LeaseTasksResponse(tasks=[pb.Task(task_id="task-of-w1")])
        assert type(reply) is pb.LeaseTasksResponse
        assert type(reply.tasks[0]) is silo.pb.silo.v1.Task
        with pytest.raises(GRPCError) as info:
            await trio_asyncio.aio_as_trio(use_stub)("missing")
        assert info.value.status.value == Code.NOT_FOUND
        assert info.value.message == "no such worker"


async def test_etcd_kv_stub_speaks_etcd_method_paths_and_messages() -> None:
    async def range_(request: bytes, ctx: CallContext) -> bytes:
        req = etcd.RangeRequest.parse(request)
        kv = mvccpb.KeyValue(key=req.key, value=b"v", mod_revision=9, lease=req.limit)
        return bytes(etcd.RangeResponse(header=etcd.ResponseHeader(revision=9), kvs=[kv], count=1))

    async with serving({"/etcdserverpb.KV/Range": range_}) as (_, address):
        host, port = parse_address(address)

        async def use_stub() -> etcd.RangeResponse:
            channel = grpclib.client.Channel(host, port)
            try:
                stub = etcd_stubs.KvStub(channel)
                return await stub.range(etcd.RangeRequest(key=b"/silo/a", limit=3), timeout=5)
            finally:
                channel.close()

        reply = await trio_asyncio.aio_as_trio(use_stub)()
    assert reply.header.revision == 9
    assert type(reply.kvs[0]) is silo.pb.mvccpb.KeyValue
    assert reply.kvs == [mvccpb.KeyValue(key=b"/silo/a", value=b"v", mod_revision=9, lease=3)]


class _Watcher(etcd_stubs.WatchBase):
    """Answers every create request with ``created`` and one PUT event for its key."""

    async def watch(
        self, messages: AsyncIterator[etcd.WatchRequest]
    ) -> AsyncIterator[etcd.WatchResponse]:
        async for request in messages:
            create = request.create_request
            assert type(create) is etcd.WatchCreateRequest
            event = mvccpb.Event(type=mvccpb.EventEventType.PUT, kv=mvccpb.KeyValue(key=create.key))
            yield etcd.WatchResponse(watch_id=create.watch_id, created=True, events=[event])


async def test_etcd_watch_stream_through_generated_stub_and_base() -> None:
    requests = [
        etcd.WatchRequest(create_request=etcd.WatchCreateRequest(key=key, watch_id=n))
        for n, key in enumerate([b"/a", b"/b"], start=1)
    ]

    async def round_trip() -> list[etcd.WatchResponse]:
        server = grpclib.server.Server([_Watcher()])
        await server.start("127.0.0.1", 0)
        channel = None
        try:
            port = server._server.sockets[0].getsockname()[1]
            channel = grpclib.client.Channel("127.0.0.1", port)
            stub = etcd_stubs.WatchStub(channel)
            return [reply async for reply in stub.watch(requests, timeout=5)]
        finally:
            if channel is not None:
                channel.close()
            server.close()
            await server.wait_closed()

    async with open_asyncio_loop():
        replies = await trio_asyncio.aio_as_trio(round_trip)()
    assert [(r.watch_id, r.created, r.events[0].kv.key) for r in replies] == [
        (1, True, b"/a"),
        (2, True, b"/b"),
    ]
    assert all(type(r.events[0]) is silo.pb.mvccpb.Event for r in replies)

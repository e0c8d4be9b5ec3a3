"""grpclib client stubs and server bases built from a service's method table.

A :class:`Service` is a protobuf service as data: its full name and one :class:`Rpc` row per
method (Python name, proto name, request class, reply class, cardinality). The generated modules
in :mod:`silo.transport.stubs` hold one table per service and two classes made from it::

    class SiloStub(ServiceStub, service=SILO): ...   # await stub.lease_tasks(request)
    class SiloBase(ServiceBase, service=SILO): ...   # subclass, define lease_tasks(request)

:class:`ServiceStub` gets one method per row, with betterproto2's grpclib client calls (timeout,
deadline and metadata per call or per stub, as betterproto2's generated stubs take them):

- unary request: ``await stub.get_job(request)``, or ``stub.follow(request)`` (an async iterator
  of replies) when the server streams;
- streamed request (an iterable or async iterable of messages): ``await stub.upload(messages)``,
  or ``stub.watch(messages)`` (an async iterator of replies) when both sides stream.

:class:`ServiceBase` serves a subclass's methods through grpclib's ``__mapping__`` protocol
(``grpclib.server.Server([servicer])``): the method for a row receives the decoded request (or an
async iterator of requests) and returns the reply (or is an async generator of replies); a method
the subclass does not define answers ``UNIMPLEMENTED``.

The request and reply classes are the ones in :mod:`silo.pb`, so the transport decodes into the
same types the simulator and the services use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

import betterproto2
from betterproto2 import grpclib as betterproto2_grpclib
from betterproto2.grpclib.grpclib_client import MessageSource, MetadataLike
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline
from grpclib.server import Stream

__all__ = ["Rpc", "Service", "ServiceBase", "ServiceStub"]

MAX_RPCS = 1000
"""Bound on a service's method table (a sanity check on generated tables)."""

CLIENT_STREAMING = frozenset({Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM})
SERVER_STREAMING = frozenset({Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM})


@dataclass(frozen=True)
class Rpc:
    """One method of a service: ``python_name`` is the stub's and the base's method name (the
    compiler's snake case of ``name``)."""

    python_name: str
    name: str
    request: type[betterproto2.Message]
    reply: type[betterproto2.Message]
    cardinality: Cardinality


@dataclass(frozen=True, init=False)
class Service:
    """A protobuf service (``name`` is ``package.Service``) and its methods, in proto order."""

    name: str
    rpcs: tuple[Rpc, ...]

    def __init__(self, name: str, *rpcs: Rpc) -> None:
        if len(rpcs) > MAX_RPCS:
            raise ValueError(f"{name}: {len(rpcs)} rpcs, more than MAX_RPCS ({MAX_RPCS})")
        names = [rpc.python_name for rpc in rpcs]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: two rpcs share a Python name: {names}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "rpcs", tuple(rpcs))

    def path(self, rpc: Rpc) -> str:
        """The gRPC method path, ``/package.Service/Method``."""
        return f"/{self.name}/{rpc.name}"


def _client_method(path: str, rpc: Rpc) -> Callable[..., Any]:
    """The stub method for ``rpc``. It returns betterproto2's call: a coroutine (to await) for a
    unary reply, an async iterator of replies when the server streams."""
    cardinality = rpc.cardinality

    def call(
        self: ServiceStub,
        request: betterproto2.Message | MessageSource,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        metadata: MetadataLike | None = None,
    ) -> Any:
        options = {"timeout": timeout, "deadline": deadline, "metadata": metadata}
        if cardinality is Cardinality.UNARY_UNARY:
            return self._unary_unary(path, request, rpc.reply, **options)
        if cardinality is Cardinality.UNARY_STREAM:
            return self._unary_stream(path, request, rpc.reply, **options)
        if cardinality is Cardinality.STREAM_UNARY:
            return self._stream_unary(path, request, rpc.request, rpc.reply, **options)
        return self._stream_stream(path, request, rpc.request, rpc.reply, **options)

    call.__name__ = call.__qualname__ = rpc.python_name
    call.__doc__ = (
        f"Call ``{path}`` ({cardinality.name.lower()}): {rpc.request.__name__} ->"
        f" {rpc.reply.__name__}. Keyword options: timeout, deadline, metadata."
    )
    return call


class ServiceStub(betterproto2_grpclib.ServiceStub):
    """grpclib client of ``service``: ``Stub(channel, *, timeout=None, deadline=None,
    metadata=None)``, one method per rpc (see the module docstring)."""

    service: ClassVar[Service]

    def __init_subclass__(cls, service: Service | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if service is not None:
            _add_methods(cls, service, lambda rpc: _client_method(service.path(rpc), rpc))


def _add_methods(cls: type, service: Service, method: Callable[[Rpc], Callable[..., Any]]) -> None:
    """Make ``cls`` the class of ``service``: a ``method(rpc)`` for every rpc ``cls`` does not
    define itself."""
    cls.service = service  # type: ignore[attr-defined]
    for rpc in service.rpcs:
        if rpc.python_name not in cls.__dict__:
            setattr(cls, rpc.python_name, method(rpc))


def _unimplemented(rpc: Rpc) -> Callable[..., Any]:
    if rpc.cardinality in SERVER_STREAMING:

        async def stream_unimplemented(self: ServiceBase, request: Any) -> AsyncIterator[Any]:
            raise GRPCError(Status.UNIMPLEMENTED)
            yield  # an async generator, as an implementation of a streaming rpc is

        method: Callable[..., Any] = stream_unimplemented
    else:

        async def unimplemented(self: ServiceBase, request: Any) -> Any:
            raise GRPCError(Status.UNIMPLEMENTED)

        method = unimplemented
    method.__name__ = method.__qualname__ = rpc.python_name
    return method


def _serve(base: ServiceBase, rpc: Rpc) -> Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]:
    """grpclib's handler for ``rpc``: decode, call the servicer's method, send the reply."""
    method = getattr(base, rpc.python_name)

    async def handle(stream: Stream[Any, Any]) -> None:
        if rpc.cardinality in CLIENT_STREAMING:
            request: Any = stream.__aiter__()
        else:
            request = await stream.recv_message()
            assert request is not None
        if rpc.cardinality in SERVER_STREAMING:
            await base._call_rpc_handler_server_stream(method, stream, request)
        else:
            await stream.send_message(await method(request))

    return handle


class ServiceBase(betterproto2_grpclib.ServiceBase):
    """Server base of ``service``: subclass it, define the rpc methods, and pass an instance to
    ``grpclib.server.Server`` (see the module docstring)."""

    service: ClassVar[Service]

    def __init_subclass__(cls, service: Service | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if service is not None:
            _add_methods(cls, service, _unimplemented)

    def __mapping__(self) -> dict[str, Handler]:
        """gRPC method path -> grpclib handler, for every rpc of ``service``."""
        return {
            self.service.path(rpc): Handler(
                _serve(self, rpc), rpc.cardinality, rpc.request, rpc.reply
            )
            for rpc in self.service.rpcs
        }

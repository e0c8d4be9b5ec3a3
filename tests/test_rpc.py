"""silo.rpc: the transport-independent seam."""

from __future__ import annotations

import subprocess
import sys

from silo.errors import Aborted, Code, FailedPrecondition, NotFound, SiloError
from silo.rpc import SILO_SERVICE, CallContext, RpcError, method_path


def test_method_path() -> None:
    assert SILO_SERVICE == "silo.v1.Silo"
    assert method_path("Enqueue") == "/silo.v1.Silo/Enqueue"
    assert method_path("Check", "grpc.health.v1.Health") == "/grpc.health.v1.Health/Check"


def test_rpc_error_silo_error_round_trip() -> None:
    err = NotFound("lease not found", metadata={"silo-shard-owner": "10.0.0.7:7450"})
    rpc = RpcError.from_silo_error(err)
    assert rpc.code is Code.NOT_FOUND
    assert rpc.message == "lease not found"
    assert rpc.metadata == {"silo-shard-owner": "10.0.0.7:7450"}
    assert str(rpc) == "NOT_FOUND: lease not found"
    back = rpc.to_silo_error()
    assert type(back) is NotFound
    assert (back.message, back.metadata) == (err.message, err.metadata)

    assert type(RpcError(Code.FAILED_PRECONDITION, "x").to_silo_error()) is FailedPrecondition
    assert type(RpcError(Code.ABORTED, "x").to_silo_error()) is Aborted
    other = RpcError(Code.OUT_OF_RANGE, "x").to_silo_error()  # no dedicated subclass
    assert type(other) is SiloError and other.code is Code.OUT_OF_RANGE


def test_rpc_error_unknown_code_and_metadata_copy() -> None:
    assert RpcError(99, "?").code is Code.UNKNOWN
    metadata = {"a": "b"}
    err = RpcError(14, "down", metadata)
    metadata["a"] = "changed"
    assert err.code is Code.UNAVAILABLE and err.metadata == {"a": "b"}


def test_call_context_defaults() -> None:
    ctx = CallContext(method="/silo.v1.Silo/Enqueue")
    assert ctx.metadata == {} and ctx.peer == ""


def test_rpc_module_imports_no_network_or_asyncio() -> None:
    code = (
        "import sys, silo.rpc; "
        "bad = [m for m in ('asyncio', 'grpclib', 'socket', 'trio_asyncio') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

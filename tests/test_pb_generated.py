"""silo/pb/ (messages) and silo/transport/stubs/ (grpclib stubs) are generated from proto/ and
checked in; keep them in sync and working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import betterproto2
import pytest

from silo.pb import etcdserverpb as etcd
from silo.pb import mvccpb
from silo.pb.silo import v1 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_code_matches_a_fresh_generation() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is needed to regenerate")
    pytest.importorskip("betterproto2_compiler", reason="betterproto2-compiler (dev extra)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        "silo/pb/ or silo/transport/stubs/ differs from a fresh generation; run"
        " `.venv/bin/python scripts/gen_proto.py`"
        f" and commit the result\n{proc.stdout}{proc.stderr}"
    )


def test_message_round_trip() -> None:
    request = pb.EnqueueRequest(
        shard=5,
        job=pb.JobSpec(
            tenant="acme",
            id="job-1",
            task_group="emails",
            payload=b"\x00\x01\xff" * 100,
            priority=7,
            has_priority=True,
            start_at_ms=2**63 + 5,
            retry=pb.RetryPolicy(retry_count=3, initial_backoff_ms=100, backoff_factor=2.5),
            has_retry=True,
            metadata={"team": "billing", "ünïcode": "✓"},
            limits=[
                pb.Limit(concurrency=pb.ConcurrencyLimit(key="k", max_concurrency=2)),
                pb.Limit(rate=pb.RateLimit(name="r", key="k2", limit=10, per_ms=1000)),
                pb.Limit(
                    floating=pb.FloatingConcurrencyLimit(
                        key="f", default_max_concurrency=4, metadata={"a": "b"}
                    )
                ),
            ],
        ),
    )
    data = bytes(request)
    decoded = pb.EnqueueRequest.parse(data)
    assert decoded == request
    assert bytes(decoded) == data
    kinds = [betterproto2.which_one_of(limit, "kind")[0] for limit in decoded.job.limits]
    assert kinds == ["concurrency", "rate", "floating"]
    assert decoded.job.start_at_ms == 2**63 + 5


def test_enums_oneofs_and_defaults_round_trip() -> None:
    job = pb.Job(status=pb.JobStatus.RUNNING, attempts=[pb.Attempt(state=pb.AttemptState.FAILED)])
    assert pb.Job.parse(bytes(job)) == job
    assert pb.Job.parse(bytes(job)).status is pb.JobStatus.RUNNING

    failed = pb.Outcome(task_id="t1", attempt=2, failure=pb.Failure(code="E_TIMEOUT", data=b"x"))
    cancelled = pb.Outcome(task_id="t1", cancelled=pb.Cancelled())
    assert betterproto2.which_one_of(pb.Outcome.parse(bytes(failed)), "result")[0] == "failure"
    assert betterproto2.which_one_of(pb.Outcome.parse(bytes(cancelled)), "result")[0] == "cancelled"

    empty = pb.GetJobResultResponse.parse(b"")
    assert empty.status is pb.JobStatus.UNSPECIFIED
    assert empty.result == b""
    assert bytes(pb.JobActionResponse()) == b""


def test_messages_import_without_grpclib_or_asyncio() -> None:
    """The simulator imports the messages; they must not pull in grpclib or asyncio."""
    import subprocess
    import sys

    code = (
        "import sys; import silo.pb.silo.v1, silo.pb.etcdserverpb, silo.pb.mvccpb, silo.wire, "
        "silo.service; "
        "bad = [m for m in ('grpclib', 'asyncio') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_etcd_messages_keep_etcds_field_numbers() -> None:
    """Bytes as etcd's own clients encode them (field numbers from etcd's rpc.proto / kv.proto)."""
    assert bytes(etcd.PutRequest(key=b"k", value=b"v", lease=5)) == b"\x0a\x01k\x12\x01v\x18\x05"
    assert bytes(etcd.LeaseGrantRequest(ttl=10, id=3)) == b"\x08\x0a\x10\x03"
    assert bytes(etcd.LeaseKeepAliveResponse(id=3, ttl=9)) == b"\x10\x03\x18\x09"
    assert bytes(etcd.Compare(range_end=b"z")) == b"\x82\x04\x01z"  # range_end = 64
    assert bytes(etcd.WatchResponse(events=[mvccpb.Event()])) == b"\x5a\x00"  # events = 11
    assert bytes(mvccpb.KeyValue(lease=1)) == b"\x30\x01"
    assert mvccpb.EventEventType.DELETE.value == 1
    txn = etcd.TxnRequest(
        compare=[etcd.Compare(key=b"a", target=etcd.CompareCompareTarget.VERSION, version=0)],
        success=[etcd.RequestOp(request_put=etcd.PutRequest(key=b"a", value=b"1"))],
        failure=[etcd.RequestOp(request_range=etcd.RangeRequest(key=b"a"))],
    )
    decoded = etcd.TxnRequest.parse(bytes(txn))
    assert decoded == txn
    assert betterproto2.which_one_of(decoded.compare[0], "target_union") == ("version", 0)
    assert betterproto2.which_one_of(decoded.success[0], "request")[0] == "request_put"

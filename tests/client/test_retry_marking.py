"""Every try of one enqueue call carries the same request id, and each call draws a new one:
the server recognises a later try of a call by it (and only a later try of that call)."""

from __future__ import annotations

from silo.client.client import RetrySettings, SiloClient
from silo.errors import Code
from silo.model import NewJob
from silo.rpc import Channel, RpcError, method_path
from silo.wire import pb


class ScriptedChannel:
    """Answers each call with the next scripted error, then OK; records what was sent."""

    def __init__(self, errors: list[RpcError]) -> None:
        self.errors = list(errors)
        self.sent: list[pb.EnqueueRequest] = []

    async def call(self, method: str, request: bytes, *, timeout: float | None = None,
                   metadata: dict[str, str] | None = None) -> bytes:
        if method == method_path("GetClusterInfo"):
            return bytes(pb.GetClusterInfoResponse(map_version=1, shards=[pb.ShardInfo(
                id=0, range_start=0, range_end_max=True, owner_address="n1:1")]))
        self.sent.append(pb.EnqueueRequest.parse(request))
        if self.errors:
            raise self.errors.pop(0)
        return bytes(pb.EnqueueResponse(id="j"))

    async def aclose(self) -> None:
        return None


class ScriptedConnector:
    def __init__(self, channel: ScriptedChannel) -> None:
        self.channel = channel

    async def connect(self, address: str) -> Channel:
        return self.channel


def scripted_client(*errors: RpcError) -> tuple[SiloClient, ScriptedChannel]:
    channel = ScriptedChannel(list(errors))
    client = SiloClient(ScriptedConnector(channel), ["n1:1"],
                        retry=RetrySettings(initial_backoff_s=0.0, max_backoff_s=0.0))
    return client, channel


async def test_every_try_of_one_call_sends_the_same_request_id() -> None:
    client, channel = scripted_client(RpcError(Code.UNAVAILABLE, "reset"),
                                      RpcError(Code.DEADLINE_EXCEEDED, "slow"))
    await client.enqueue("g", 1, id="j")
    ids = [r.request_id for r in channel.sent]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert len(ids[0]) == 32 and int(ids[0], 16) >= 0
    assert not any(r.retry for r in channel.sent)  # the deprecated mark is not sent


async def test_each_call_draws_a_new_request_id() -> None:
    client, channel = scripted_client()
    await client.enqueue("g", 1, id="j")
    await client.enqueue("g", 1, id="j")
    await client.enqueue_jobs([NewJob("g", b"", job_id="j")])
    ids = [r.request_id for r in channel.sent]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(ids)

"""SiloClient.call sends ``retry_request`` (the enqueue marked ``retry``) on every try after an
ambiguous failure, and only then: a try that may have landed is what makes a later one a retry."""

from __future__ import annotations

from silo.client.client import RetrySettings, SiloClient
from silo.errors import Code
from silo.rpc import Channel, RpcError
from silo.wire import pb

FIRST = pb.EnqueueRequest(shard=0, job=pb.JobSpec(id="j", task_group="g"))
RETRY = pb.EnqueueRequest(shard=0, job=pb.JobSpec(id="j", task_group="g"), retry=True)


class ScriptedChannel:
    """Answers each call with the next scripted error, then OK; records what was sent."""

    def __init__(self, errors: list[RpcError]) -> None:
        self.errors = list(errors)
        self.sent: list[pb.EnqueueRequest] = []

    async def call(self, method: str, request: bytes, *, timeout: float | None = None,
                   metadata: dict[str, str] | None = None) -> bytes:
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


async def sent_after(*errors: RpcError) -> list[bool]:
    channel = ScriptedChannel(list(errors))
    client = SiloClient(ScriptedConnector(channel), ["n1:1"],
                        retry=RetrySettings(initial_backoff_s=0.0, max_backoff_s=0.0))
    await client.call("Enqueue", FIRST, pb.EnqueueResponse, retry_request=RETRY)
    return [r.retry for r in channel.sent]


async def test_no_failure_sends_the_first_request_only() -> None:
    assert await sent_after() == [False]


async def test_every_try_after_an_ambiguous_failure_is_marked_retry() -> None:
    assert await sent_after(RpcError(Code.UNAVAILABLE, "reset"),
                            RpcError(Code.DEADLINE_EXCEEDED, "slow")) == [False, True, True]

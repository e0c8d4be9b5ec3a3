"""FakeCluster: an in-memory stand-in for a SiloClient and the nodes behind it, for worker unit
tests that script what each RPC answers.

It serves LeaseTasks (hands out the tasks given to it, then long-polls empty), Heartbeat and
ReportOutcomes, records every call with the (trio) time it was made, and enforces the client's
``max_message_bytes`` on requests as the real channel does. Tests steer it with:

- ``fail(method, address=None)``: a callable ``(request) -> RpcError | None`` consulted on every
  call of ``method`` (to ``address`` only, if given);
- ``report_status``: a callable ``(outcome) -> pb.OutcomeStatus`` for per-report statuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from silo.client.client import RetrySettings
from silo.client.types import pack
from silo.errors import Code
from silo.rpc import RpcError
from silo.wire import pb

ADDRESS = "node-a:1"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class Call:
    at: float
    address: str
    method: str
    request: Any


@dataclass
class FakeCluster:
    lease_ms: int = 1000
    max_message_bytes: int = MAX_MESSAGE_BYTES
    addresses: list[str] = field(default_factory=lambda: [ADDRESS])
    owners: dict[int, str] = field(default_factory=dict)
    retry: RetrySettings = field(default_factory=lambda: RetrySettings(call_timeout_s=2.0))
    to_lease: list[pb.Task] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    recorded: dict[str, pb.Outcome] = field(default_factory=dict)
    failures: dict[tuple[str, str | None], Callable[[Any], RpcError | None]] = field(
        default_factory=dict
    )
    report_status: Callable[[pb.Outcome], pb.OutcomeStatus] | None = None
    _ids: int = 0

    # -- what the worker uses of SiloClient -------------------------------------------------

    def new_id(self) -> str:
        self._ids += 1
        return f"{self._ids:032x}"

    def owner_addresses(self) -> list[str]:
        return list(self.addresses)

    async def refresh_shard_map(self, *, force: bool = False) -> None:
        """The worker's periodic discovery: the nodes are :attr:`addresses` (tests change it)."""
        self.calls.append(Call(trio.current_time(), self.addresses[0], "GetClusterInfo", None))

    async def owner_address(self, shard_id: int, *, stale: str | None = None,
                            hint: str | None = None) -> str:
        if hint and hint != stale:
            return hint
        return self.owners.get(shard_id, self.addresses[0])

    async def call_address(self, address: str, method: str, request: Any,
                           response_type: type[Any], *, timeout: float | None = None) -> Any:
        self.calls.append(Call(trio.current_time(), address, method, request))
        await trio.sleep(0.001)
        size = len(bytes(request))
        if size > self.max_message_bytes:
            raise RpcError(Code.RESOURCE_EXHAUSTED,
                           f"request message of {size} bytes exceeds the limit of "
                           f"{self.max_message_bytes}")
        for key in ((method, address), (method, None)):
            rule = self.failures.get(key)
            error = rule(request) if rule is not None else None
            if error is not None:
                raise error
        if method == "LeaseTasks":
            return await self._lease(request)
        if method == "Heartbeat":
            return pb.HeartbeatResponse(lease_expiry_ms=1)
        if method == "ReportOutcomes":
            statuses = []
            for outcome in request.outcomes:
                status = (self.report_status(outcome) if self.report_status is not None
                          else pb.OutcomeStatus())
                if status.code == 0:
                    self.recorded[outcome.task_id] = outcome
                statuses.append(status)
            return pb.ReportOutcomesResponse(statuses=statuses)
        raise RpcError(Code.UNIMPLEMENTED, method)

    async def _lease(self, request: pb.LeaseTasksRequest) -> pb.LeaseTasksResponse:
        if not self.to_lease:
            await trio.sleep(request.wait_ms / 1000)
        tasks, self.to_lease = (self.to_lease[: request.max_tasks],
                                self.to_lease[request.max_tasks :])
        return pb.LeaseTasksResponse(tasks=tasks, lease_ms=self.lease_ms)

    # -- steering and inspection ------------------------------------------------------------

    def fail(self, method: str, rule: Callable[[Any], RpcError | None],
             address: str | None = None) -> None:
        self.failures[(method, address)] = rule

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


def make_task(n: int, *, shard: int = 0, payload: Any = None, timeout_ms: int = 0) -> pb.Task:
    return pb.Task(shard=shard, task_id=f"t{n}", tenant="default", job_id=f"j{n}", attempt=1,
                   task_group="g", payload=pack(payload), priority=50, timeout_ms=timeout_ms)

"""A client that sends requests with one value past its limit (DESIGN §6 "Bad input").

Each request is an Enqueue of a fresh job id with exactly one field over its limit (ids and
names one character to 64 KiB too long, a priority, retry policy, timeout, payload, limit list or
metadata past its bound). The node must refuse it with INVALID_ARGUMENT, name the limit in a
message of at most :data:`STATUS_MESSAGE_MAX_CHARS` characters, and create nothing: an OK answer,
another refusal, or the job appearing after an ambiguous failure fails the run
(``Invariant.BAD_INPUT``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from silo.errors import Code, SiloError
from silo.model import ConcurrencyLimit, RetryPolicy
from silo.shard.validation import ShardLimits
from sim.invariants import Invariant

if TYPE_CHECKING:
    from sim.simulator import Simulator

LIMITS = ShardLimits()
STATUS_MESSAGE_MAX_CHARS = 1024
"""What the real transport lets through of a status message (silo.transport.grpc)."""
BAD_INPUT_PROB = 0.3
"""Share of runs with a bad-input client."""
SETTLE_S = 5.0
"""After an ambiguous failure, how long to wait before checking the job was not created."""


@dataclass(frozen=True)
class BadField:
    limit_name: str
    """The limit the refusal must name."""
    build: Callable[[random.Random, dict[str, Any]], None]
    """Sets one field of the enqueue's keyword arguments past ``limit_name``."""


def _too_long(rng: random.Random, limit: int) -> str:
    return "x" * rng.choice([limit + 1, limit + rng.randint(2, 1000), 64 * 1024])


def _set(name: str, limit: int) -> Callable[[random.Random, dict[str, Any]], None]:
    def build(rng: random.Random, kw: dict[str, Any]) -> None:
        kw[name] = _too_long(rng, limit)
    return build


BAD_FIELDS: tuple[BadField, ...] = (
    BadField("job_id_max_chars", _set("id", LIMITS.job_id_max_chars)),
    BadField("tenant_max_chars", _set("tenant", LIMITS.tenant_max_chars)),
    BadField("task_group_max_chars", _set("task_group", LIMITS.task_group_max_chars)),
    BadField("limit_key_max_chars", lambda rng, kw: kw.update(limits=(
        ConcurrencyLimit(_too_long(rng, LIMITS.limit_key_max_chars), 1),))),
    BadField("metadata_key_max_chars", lambda rng, kw: kw.update(metadata={
        _too_long(rng, LIMITS.metadata_key_max_chars): "v"})),
    BadField("priority_max", lambda rng, kw: kw.update(
        priority=LIMITS.priority_max + rng.choice([1, 10**6]))),
    BadField("retry_count_max", lambda rng, kw: kw.update(retry=RetryPolicy(
        retry_count=LIMITS.retry_count_max + rng.choice([1, 10**9])))),
    BadField("backoff_factor_max", lambda rng, kw: kw.update(retry=RetryPolicy(
        retry_count=3, backoff_factor=LIMITS.backoff_factor_max * rng.choice([1.5, 1e300])))),
    BadField("max_timeout_ms", lambda rng, kw: kw.update(
        timeout_ms=LIMITS.max_timeout_ms + rng.choice([1, 10**12]))),
    BadField("limits_per_job_max", lambda rng, kw: kw.update(limits=tuple(
        ConcurrencyLimit(f"bad{i}", 1) for i in range(LIMITS.limits_per_job_max + 1)))),
)


async def bad_input(sim: Simulator, host: Any, task_group: str, rng: random.Random) -> None:
    """Send bad enqueues, one every 0.2-2 s, during the fault phase."""
    client = host.client()
    for n in range(10_000):
        await trio.sleep(rng.uniform(0.2, 2.0))
        field = rng.choice(BAD_FIELDS)
        kw: dict[str, Any] = {"task_group": task_group, "tenant": "bad-input",
                              "id": f"bad-input-{n:04d}"}
        field.build(rng, kw)
        sim.count(f"bad_input.{field.limit_name}")
        tenant, job_id = kw["tenant"], kw["id"]
        task_group_arg = kw.pop("task_group")
        what = f"an enqueue past {field.limit_name}"
        try:
            await client.enqueue(task_group_arg, {"bad": n}, **kw)
        except SiloError as exc:
            if exc.code == Code.INVALID_ARGUMENT:
                if field.limit_name not in exc.message:
                    sim.checker.fail(Invariant.BAD_INPUT, f"{what} was refused, but the "
                                     f"message does not name the limit: {exc.message[:200]!r}")
                elif len(exc.message) > STATUS_MESSAGE_MAX_CHARS:
                    sim.checker.fail(Invariant.BAD_INPUT, f"{what} was refused with a message "
                                     f"of {len(exc.message)} characters")
                continue
            # A cluster's routing answer ("shard not found", the owner elsewhere) is the
            # last error when the shard kept moving until the client's tries ran out: the
            # request never reached the shard's owner, which is what validates it.
            routed = exc.code == Code.NOT_FOUND and exc.message.startswith("shard not found")
            if not routed and exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED,
                                               Code.INTERNAL):
                sim.checker.fail(Invariant.BAD_INPUT, f"{what} was refused with "
                                 f"{exc.code.name}, not INVALID_ARGUMENT: {exc.message[:200]!r}")
                continue
            await trio.sleep(SETTLE_S)
            if (tenant, job_id) in sim.checker.jobs:
                sim.checker.fail(Invariant.BAD_INPUT, f"{what} failed {exc.code.name} but "
                                 f"created job {job_id[:80]!r}")
            continue
        sim.checker.fail(Invariant.BAD_INPUT, f"{what} was accepted (job {job_id[:80]!r} of "
                         f"tenant {tenant[:80]!r})")

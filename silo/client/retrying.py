"""How the client retries a call: the settings, the backoff, and what to do after each failed
try. Pure decisions, no I/O: :class:`silo.client.core.ClientCore` carries them out.

UNAVAILABLE and DEADLINE_EXCEEDED are retried with bounded exponential backoff (full jitter on
the upper half). A "shard not found" answer is followed to the owner it names, at once, when
the answer carries a hint naming another node; otherwise the shard map is fetched again before
the next try. Any other status ends the call, except that after an ambiguous failure (the first
try may have taken effect) ``retried_ok(err)`` may say the error only shows the earlier try
landed: the call then succeeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from silo.client.routing import Routing, is_shard_not_found
from silo.errors import Code, SiloError
from silo.node import SHARD_OWNER_METADATA
from silo.rpc import RpcError

RETRYABLE = (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)

MAX_ATTEMPTS = 1000
"""The most tries :class:`RetrySettings` allows for one call."""

_MAX_BACKOFF_DOUBLINGS = 60


@dataclass(frozen=True)
class RetrySettings:
    """How the client retries transient failures: at most ``attempts`` tries per call, each
    bounded by ``call_timeout_s``, with backoff growing from ``initial_backoff_s`` up to
    ``max_backoff_s`` between them."""

    attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    call_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(f"attempts must be 1..{MAX_ATTEMPTS}, got {self.attempts}")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("backoffs must satisfy 0 <= initial_backoff_s <= max_backoff_s, got "
                             f"{self.initial_backoff_s} and {self.max_backoff_s}")
        if not self.call_timeout_s > 0:
            raise ValueError(f"call_timeout_s must be positive, got {self.call_timeout_s}")

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed try number ``attempt`` (0-based): the exponential step,
        capped at ``max_backoff_s``, times a jitter in [0.5, 1)."""
        step = self.initial_backoff_s * (2 ** min(attempt, _MAX_BACKOFF_DOUBLINGS))
        return min(step, self.max_backoff_s) * (0.5 + rng.random() / 2)


class Next(Enum):
    """What to do after a failed try."""

    CALL_HINTED_OWNER = "call the owner the answer named, at once"
    BACK_OFF = "wait, then try again"
    REFRESH_MAP = "fetch the shard map again, then wait and try again"
    SUCCEED = "the error shows an earlier try took effect: the call succeeded"
    FAIL = "raise the error"


class CallTries:
    """The retry decisions for one call of ``shard_id`` (None: any node)."""

    def __init__(self, shard_id: int | None,
                 retried_ok: Callable[[SiloError], bool] | None = None) -> None:
        self.shard_id = shard_id
        self.retried_ok = retried_ok
        self.ambiguous = False
        """Some try failed in a way that may have taken effect on the server."""
        self.last: SiloError | None = None
        """The error of the latest failed try (raised when the tries run out)."""

    def after_error(self, exc: RpcError, address: str, attempt: int, routing: Routing) -> Next:
        """Record try ``attempt``'s failure against ``address`` and say what comes next
        (``routing`` learns of owner hints and of owners that stopped answering)."""
        err = exc.to_silo_error()
        self.last = err
        if exc.code in RETRYABLE:
            self.ambiguous = True
            if self.shard_id is not None and attempt >= 1:
                routing.forget_owner(self.shard_id)
            return Next.BACK_OFF
        if is_shard_not_found(exc.code, exc.message):
            hint = exc.metadata.get(SHARD_OWNER_METADATA)
            if self.shard_id is not None and hint and hint != address:
                routing.follow_hint(self.shard_id, hint)
                return Next.CALL_HINTED_OWNER
            return Next.REFRESH_MAP
        if self.ambiguous and self.retried_ok is not None and self.retried_ok(err):
            return Next.SUCCEED
        return Next.FAIL


def map_fetch_fails(exc: RpcError) -> bool:
    """Whether a failed GetClusterInfo try ends the shard-map fetch (not a transient error)."""
    return exc.code not in RETRYABLE

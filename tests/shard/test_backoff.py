"""Retry backoff (silo.shard.transitions): the formula, and no overflow for any valid policy."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from silo.model import RetryPolicy
from silo.shard.transitions import backoff_ms, retry_delay_ms

WEEK_MS = 7 * 24 * 3600 * 1000


def test_retry_backoff_formula() -> None:
    policy = RetryPolicy(retry_count=5, initial_backoff_ms=100, max_backoff_ms=1000,
                         backoff_factor=3.0)
    assert [backoff_ms(policy, k) for k in range(1, 6)] == [100, 300, 900, 1000, 1000]
    assert backoff_ms(policy, 2, jitter=1.5) == 450


def test_factor_100_with_1000_retries_does_not_overflow() -> None:
    policy = RetryPolicy(retry_count=1000, initial_backoff_ms=0, max_backoff_ms=0,
                         backoff_factor=100.0)
    assert [retry_delay_ms(policy, n) for n in (1, 156, 157, 1000)] == [0, 0, 0, 0]
    assert retry_delay_ms(policy, 1001) is None
    steep = RetryPolicy(1000, 1, WEEK_MS, 100.0)
    assert retry_delay_ms(steep, 1000) == WEEK_MS


@given(
    retry_count=st.integers(0, 1000),
    initial=st.integers(0, WEEK_MS),
    ceiling=st.integers(0, WEEK_MS),
    factor=st.floats(1.0, 100.0),
    retry_number=st.integers(1, 1000),
    jitter=st.floats(1.0, 2.0, exclude_max=True),
)
def test_backoff_is_clamped_and_monotone(
    retry_count: int, initial: int, ceiling: int, factor: float, retry_number: int,
    jitter: float,
) -> None:
    policy = RetryPolicy(retry_count, initial, ceiling, factor, True)
    delay = backoff_ms(policy, retry_number)
    assert 0 <= delay <= ceiling
    assert delay <= backoff_ms(policy, retry_number + 1)
    assert backoff_ms(policy, retry_number, jitter) <= 2 * ceiling

"""The idle-polls bound (sim.polls) against the worker SDK's backoff schedule."""

from __future__ import annotations

from silo.client.worker import empty_reply_backoff_s
from sim.polls import EMPTY_PER_S, EMPTY_SLACK, backoff_ramp, empty_reply_bound


def empty_reply_times(gap_s: float) -> list[float]:
    """When a lease loop that never waits on the server gets its empty replies within ``gap_s``
    of a reset: the earliest the SDK's backoff allows."""
    times, t, k = [], 0.0, 1
    while t <= gap_s:
        times.append(t)
        t += empty_reply_backoff_s(k)
        k += 1
    return times


def test_a_gap_between_tasks_holds_at_most_the_ramp_plus_one_per_second() -> None:
    ramp = backoff_ramp()
    assert ramp == 7  # 10, 20, ..., 640 ms
    gaps = [i / 100 for i in range(1, 2000)]
    assert all(len(empty_reply_times(g)) <= ramp + g for g in gaps)
    # and the ramp is needed: right after a reset, the replies come faster than 2 per task
    assert max(len(empty_reply_times(g)) - g for g in gaps) > ramp - 1


def test_a_worker_that_gets_a_task_every_few_hundred_ms_is_within_the_bound() -> None:
    """priority --seed 250: one task every 0.27-0.6 s for 440 s, 3-5 empty replies each."""
    gap_s, tasks = 0.4, 1100
    empty = tasks * len(empty_reply_times(gap_s))
    assert empty <= empty_reply_bound(gap_s * tasks, tasks)


def test_a_busy_loop_is_over_the_bound() -> None:
    """Without the backoff, a 50 ms long poll answers 20 times a second."""
    idle_s = 100.0
    assert int(idle_s / 0.05) > empty_reply_bound(idle_s, 0)
    assert empty_reply_bound(idle_s, 0) == int(EMPTY_PER_S * idle_s) + EMPTY_SLACK

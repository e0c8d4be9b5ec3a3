"""DST scenarios: one module each, each with ``async def run(sim, rng)``.

A scenario draws its own parameters from ``rng`` (recording them with ``sim.param``), builds the
world on the simulator, runs a fault phase, heals, and returns once the liveness phase settled.
Seeds map to scenarios round-robin in the order below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from scenarios import (
    cancel_releases,
    chaos,
    concurrency,
    crash_restart,
    disk_errors,
    floating,
    grant_race,
    happy,
    head_of_line,
    high_latency,
    lease_expiry,
    message_loss,
    priority,
    rate_limits,
    retry_after_delete,
    retry_extremes,
    retry_releases,
    retry_storm,
    zombie,
)

Scenario = Callable[[Any, Any], Awaitable[None]]

SCENARIOS: dict[str, Scenario] = {
    "happy": happy.run,
    "lease_expiry": lease_expiry.run,
    "message_loss": message_loss.run,
    "high_latency": high_latency.run,
    "chaos": chaos.run,
    "crash_restart": crash_restart.run,
    "disk_errors": disk_errors.run,
    "priority": priority.run,
    "retry_storm": retry_storm.run,
    "concurrency": concurrency.run,
    "grant_race": grant_race.run,
    "retry_releases": retry_releases.run,
    "cancel_releases": cancel_releases.run,
    "floating": floating.run,
    "rate_limits": rate_limits.run,
    "head_of_line": head_of_line.run,
    "zombie": zombie.run,
    "retry_extremes": retry_extremes.run,
    "retry_after_delete": retry_after_delete.run,
}

DESCRIPTIONS: dict[str, str] = {
    name: (mod.__doc__ or "").strip().splitlines()[0]
    for name, mod in {
        "happy": happy, "lease_expiry": lease_expiry, "message_loss": message_loss,
        "high_latency": high_latency, "chaos": chaos, "crash_restart": crash_restart,
        "disk_errors": disk_errors, "priority": priority, "retry_storm": retry_storm,
        "concurrency": concurrency,
        "grant_race": grant_race,
        "retry_releases": retry_releases,
        "cancel_releases": cancel_releases,
        "floating": floating,
        "rate_limits": rate_limits,
        "head_of_line": head_of_line,
        "zombie": zombie,
        "retry_extremes": retry_extremes,
        "retry_after_delete": retry_after_delete,
    }.items()
}

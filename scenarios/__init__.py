"""DST scenarios: one module each, each with ``async def run(sim, rng)``.

A scenario draws its own parameters from ``rng`` (usually ``Workload.draw(rng, sim.param, ...)``
with its overrides, recording them with ``sim.param``), builds the world on the simulator, runs a
fault phase, heals, and returns once the liveness phase settled.

Scenarios are discovered: every module of this package with a ``run`` coroutine function is one,
named after its module, described by its docstring's first line. ``ORDER`` lists the scenarios
that existed before discovery, in their original round-robin order (so seeds keep their meaning);
new modules follow in alphabetical order. Adding a scenario is adding a module.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Awaitable, Callable
from typing import Any

Scenario = Callable[[Any, Any], Awaitable[None]]

ORDER = (
    "happy", "lease_expiry", "message_loss", "high_latency", "chaos", "crash_restart",
    "disk_errors", "priority", "retry_storm", "concurrency", "grant_race", "retry_releases",
    "cancel_releases", "floating", "rate_limits", "head_of_line", "retry_after_delete",
)


def _discover() -> tuple[dict[str, Scenario], dict[str, str]]:
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        run = getattr(module, "run", None)
        if run is not None and inspect.iscoroutinefunction(run):
            found[info.name] = module
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return (
        {n: found[n].run for n in names},
        {n: (found[n].__doc__ or "").strip().splitlines()[0] if found[n].__doc__ else ""
         for n in names},
    )


SCENARIOS, DESCRIPTIONS = _discover()

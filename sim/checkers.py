"""The invariant checkers, by their older module name: see :mod:`sim.check` (one module per
invariant family)."""

from __future__ import annotations

from sim.check import *  # noqa: F403
from sim.check import __all__  # noqa: F401

"""Named fault points, forced rare paths, coverage probes and planted-bug mutations.

Code that can fail in an interesting way asks ``faults.fire("disk.write.error")``; in production
nothing ever fires. The simulator installs a :class:`Faults` with per-point probabilities and a
seeded stream, and counts how often each point fired. ``faults.mutation("double-lease")`` reports
whether a planted bug is switched on; it is only ever on when the simulator is asked for it.

``faults.buggify(point)`` asks whether to take a legal but rare path now (always False in
production); ``faults.sometimes(probe)`` marks that a path was reached (a no-op in production).
Both names are registered in :mod:`silo.runtime.points`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable


class Faults:
    """Fault injection switchboard. The default instance never fires and plants no bug."""

    def __init__(
        self,
        rng: random.Random | None = None,
        rates: dict[str, float] | None = None,
        mutations: Iterable[str] = (),
    ) -> None:
        self._rng = rng
        self.rates: dict[str, float] = dict(rates or {})
        self.fired: dict[str, int] = {}
        self.mutations: frozenset[str] = frozenset(mutations)
        self.enabled = True

    def fire(self, point: str) -> bool:
        """True when the fault at ``point`` should happen now (and count it)."""
        if not self.enabled or self._rng is None:
            return False
        rate = self.rates.get(point, 0.0)
        if rate <= 0.0 or self._rng.random() >= rate:
            return False
        self.fired[point] = self.fired.get(point, 0) + 1
        return True

    def buggify(self, point: str) -> bool:
        """True when the forced rare path ``point`` should be taken now. Never in production:
        only the simulator's subclass answers True."""
        return False

    def sometimes(self, probe: str) -> None:
        """Mark that the path ``probe`` was reached (counted by the simulator only)."""
        return None

    def mutation(self, name: str) -> bool:
        """True when the planted bug ``name`` is switched on."""
        return name in self.mutations


NO_FAULTS = Faults()

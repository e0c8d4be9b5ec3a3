"""Named fault points and planted-bug mutations.

Code that can fail in an interesting way asks ``faults.fire("disk.write.error")``; in production
nothing ever fires. The simulator installs a :class:`Faults` with per-point probabilities and a
seeded stream, and counts how often each point fired. ``faults.mutation("double-lease")`` reports
whether a planted bug is switched on; it is only ever on when the simulator is asked for it.
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

    def mutation(self, name: str) -> bool:
        """True when the planted bug ``name`` is switched on."""
        return name in self.mutations


NO_FAULTS = Faults()

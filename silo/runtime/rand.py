"""Randomness seam.

Every component draws from its own :class:`random.Random`, obtained by name from a
:class:`RandomSource`. In the simulator the streams derive from the scenario seed, so the draws of
one component never shift another's.
"""

from __future__ import annotations

import hashlib
import os
import random


class RandomSource:
    """Hands out independent, named random streams.

    With a ``seed`` every stream is a deterministic function of (seed, name, how many streams of
    that name were handed out before); without one, streams are seeded from OS entropy.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._issued: dict[str, int] = {}

    @property
    def seed(self) -> int | None:
        return self._seed

    def stream(self, name: str) -> random.Random:
        """A new :class:`random.Random` for the component called ``name``."""
        if self._seed is None:
            return random.Random(int.from_bytes(os.urandom(16), "big"))
        n = self._issued.get(name, 0)
        self._issued[name] = n + 1
        digest = hashlib.blake2b(f"{self._seed}/{name}/{n}".encode(), digest_size=16).digest()
        return random.Random(int.from_bytes(digest, "big"))

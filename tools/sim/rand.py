"""Seed the randomness of the code under test that nothing passes in.

Some of the real code draws from ``random.Random()`` instances it makes itself (the client's
discovery, Vivaldi rounds, DHT storage) or from the ``random`` module's functions: seeded from
the OS, they would make two runs with one ``--seed`` differ. :func:`seeded_random` swaps the
``random`` name inside the modules of the packages under test for a :class:`RandomShim`
whose ``Random()`` (no seed given) is seeded from the run's own RNG and whose module-level
functions draw from one seeded instance. ``os.urandom`` (message ids, nonces, session keys)
is left alone: those bytes differ between runs, their sizes do not.
"""

from __future__ import annotations

import random as real_random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tools.sim.clock import PACKAGES


class RandomShim:
    """Stands in for the ``random`` module inside the code under test."""

    def __init__(self, seed: int) -> None:
        self._source = real_random.Random(seed)
        self._shared = real_random.Random(self._source.getrandbits(64))

    def Random(self, x: Any = None) -> real_random.Random:
        return real_random.Random(self._source.getrandbits(64) if x is None else x)

    def __getattr__(self, name: str) -> Any:
        shared = getattr(self._shared, name, None)
        return shared if shared is not None else getattr(real_random, name)


@contextmanager
def seeded_random(seed: int, packages: tuple[str, ...] = PACKAGES) -> Iterator[RandomShim]:
    """While inside, the already-imported modules of ``packages`` draw seeded randomness."""
    shim = RandomShim(seed)
    swapped = [m for name, m in list(sys.modules.items())
               if m is not None and name.split(".")[0] in packages
               and getattr(m, "random", None) is real_random]
    for module in swapped:
        module.random = shim  # type: ignore[attr-defined]
    try:
        yield shim
    finally:
        for module in swapped:
            module.random = real_random  # type: ignore[attr-defined]

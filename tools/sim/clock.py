"""Point the code under test's clock reads at the virtual loop's clock.

The real code reads ``time.time()`` (record expiry, datagram timestamps),
``time.monotonic()`` (timeouts, rate limits, RTT estimates) and ``time.perf_counter()`` (the
attach probes' RTTs) through ``import time``. Under the
simulator those must read virtual time, or a simulated day would expire nothing and every
rate limit would see a burst. :func:`virtual_time` swaps the ``time`` name inside the modules
of the packages under test (``overlay``, ``kademlia``, ``rpcudp``) for a :class:`TimeShim`
whose ``time``/``monotonic``/``perf_counter`` (and ``_ns`` forms) read the loop, everything
else being the real ``time`` module. Nothing else in the process changes: the simulator's own
wall-time and RSS measurements still read the real clock.

``time.time()`` is ``epoch + loop.time()``: a fixed, seed-independent epoch
(:data:`SIM_EPOCH`, 2026-01-01 UTC), so record timestamps are the same on every run.

Limits: a module that did ``from time import time`` or bound ``time.time`` at import time
(e.g. as a default argument: ``RecordStorage(clock=time.time)``) keeps the real clock; the
simulator sets those attributes itself (see :mod:`tools.sim.dhtsim`), and the report names
them as seams.
"""

from __future__ import annotations

import asyncio
import sys
import time as real_time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

#: 2026-01-01T00:00:00Z
SIM_EPOCH = 1767225600.0
PACKAGES = ("overlay", "kademlia", "rpcudp")


class TimeShim:
    """Stands in for the ``time`` module inside the code under test."""

    def __init__(self, loop: asyncio.AbstractEventLoop, epoch: float = SIM_EPOCH) -> None:
        self._loop = loop
        self._epoch = epoch

    def time(self) -> float:
        return self._epoch + self._loop.time()

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def monotonic(self) -> float:
        return self._loop.time()

    def monotonic_ns(self) -> int:
        return int(self._loop.time() * 1e9)

    def perf_counter(self) -> float:
        """Virtual too: the client times its RTT probes with it."""
        return self._loop.time()

    def perf_counter_ns(self) -> int:
        return int(self._loop.time() * 1e9)

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


def _modules(packages: tuple[str, ...]) -> Iterator[ModuleType]:
    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in packages:
            yield module


@contextmanager
def virtual_time(loop: asyncio.AbstractEventLoop, epoch: float = SIM_EPOCH,
                 packages: tuple[str, ...] = PACKAGES) -> Iterator[TimeShim]:
    """While inside, the already-imported modules of ``packages`` read ``loop``'s clock.
    Import the code under test before entering."""
    shim = TimeShim(loop, epoch)
    swapped = [m for m in _modules(packages) if getattr(m, "time", None) is real_time]
    for module in swapped:
        module.time = shim  # type: ignore[attr-defined]
    try:
        yield shim
    finally:
        for module in swapped:
            module.time = real_time  # type: ignore[attr-defined]

"""A virtual-time asyncio event loop: time jumps to the next timer instead of passing.

:class:`VirtualTimeLoop` is asyncio's own ``BaseEventLoop`` (the scheduler every asyncio
program runs on) with two things replaced:

* :meth:`VirtualTimeLoop.time` reads a virtual clock, starting at 0;
* the I/O poll (the "selector") never waits: when asyncio would block until its next timer,
  the clock is moved to that timer's deadline at once and the poll returns no events. There is
  no real I/O at all (no sockets, no self-pipe): the in-memory network of :mod:`tools.sim.net`
  delivers data with ``call_at`` timers on this loop, so every event is a timer or a ready
  callback, and the run is a pure function of the program and its seeds.

So ``await asyncio.sleep(3600)`` finishes in microseconds of wall time with ``loop.time()``
3600 later, like trio's ``MockClock(autojump_threshold=0)``. Timers fire in deadline order;
equal deadlines fire in the order they were scheduled (asyncio's heap, fed the same way on every
run). A loop with nothing ready and no timer can never make progress: :class:`Deadlock` is
raised instead of hanging (asyncio would block forever on a real selector).

Wall-clock reads inside the code under test (``time.time()``, ``time.monotonic()``) are a
separate matter: :mod:`tools.sim.clock` points them at this loop's clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from collections.abc import Callable, Mapping
from typing import Any


class Deadlock(RuntimeError):
    """The loop would wait forever: nothing is ready and no timer is scheduled."""


class VirtualSelector(selectors.BaseSelector):
    """A selector with nothing to select: ``select(timeout)`` advances the loop's clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        raise NotImplementedError("the virtual-time loop has no file descriptors")

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        raise KeyError(fileobj)

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Deadlock(
                f"virtual time {self._loop.time():.3f} s: nothing ready and no timer pending"
            )
        if timeout > 0:
            self._loop._advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._map.clear()


class _Timer(asyncio.TimerHandle):
    """A timer ordered by (deadline, scheduling sequence): ties fire first-scheduled first."""

    __slots__ = ("_seq",)
    _seq: int

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, _Timer):
            return NotImplemented
        if self._when != other._when:  # type: ignore[attr-defined]
            return bool(self._when < other._when)  # type: ignore[attr-defined]
        return self._seq < other._seq

    def __le__(self, other: object) -> bool:
        return self == other or self < other

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, _Timer):
            return NotImplemented
        return other < self

    def __ge__(self, other: object) -> bool:
        return self == other or self > other


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio event loop on a virtual clock (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = VirtualSelector(self)
        #: how many times the clock jumped forward (a measure of the run's event count)
        self.jumps = 0
        self._sequence = itertools.count()

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: Any = None) -> asyncio.TimerHandle:
        """``BaseEventLoop.call_at`` with :class:`_Timer` (first-scheduled-first ties)."""
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        timer = _Timer(when, callback, args, self, context)
        timer._seq = next(self._sequence)
        if timer._source_traceback:  # type: ignore[attr-defined]
            del timer._source_traceback[-1]  # type: ignore[attr-defined]
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def _advance(self, timeout: float) -> None:
        target = self._now + timeout
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            # land exactly on the next deadline (no float drift between "now" and "when")
            head = scheduled[0].when()
            if head <= target + 1e-9:
                target = max(self._now, head)
        self._now = target
        self.jumps += 1

    def run_in_executor(self, executor: Any, func: Callable[..., Any],
                        *args: Any) -> asyncio.Future[Any]:
        """Run ``func`` here and now (no threads: a thread's wake-up would come from outside
        virtual time); it takes no virtual time. ``asyncio.to_thread`` comes here too."""
        future: asyncio.Future[Any] = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:  # handed to the awaiting code, as an executor would
            future.set_exception(exc)
        return future

    # -- what BaseEventLoop leaves to its subclasses ----------------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        """No I/O events exist: data arrives through timers."""

    def _write_to_self(self) -> None:
        """Nothing to wake: the loop never blocks (``call_soon_threadsafe`` just queues)."""

    def close(self) -> None:
        super().close()
        self._selector.close()


def run(coro: Any, *, debug: bool = False) -> Any:
    """``asyncio.run`` on a fresh :class:`VirtualTimeLoop`: run ``coro`` to completion, then
    cancel what is left and close the loop."""
    loop = VirtualTimeLoop()
    loop.set_debug(debug)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all(loop: VirtualTimeLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

"""Fire-and-forget tasks that stay referenced until they finish, and that a stop cancels; a
step that an event may cut short (:func:`unless_set`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TaskSet:
    """asyncio keeps only weak references to tasks: one nobody holds may vanish mid-run.
    ``spawn`` holds each task until it is done; ``cancel_all`` ends the ones still running."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)


async def unless_set(step: Awaitable[T], stop: asyncio.Event | None, error: BaseException,
                     discard: Callable[[T], object] | None = None) -> T:
    """``step``, unless ``stop`` is set before it is done: then ``step`` is cancelled and
    ``error`` raised (a step done in the same turn wins). ``stop`` None: just ``step``.
    ``discard`` gets what ``step`` returns when nobody will take it: the step completed but
    this call was cancelled (or stopped) before it could hand the result on, e.g. a
    connection that must be closed, not left open."""
    if stop is None:
        return await step
    task = asyncio.ensure_future(step)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        _drop(task, discard)
        raise
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    _drop(task, discard)
    raise error


def _drop(task: asyncio.Future[T], discard: Callable[[T], object] | None) -> None:
    """Cancel ``task``; what it returns all the same (done already, or done before the
    cancellation reached it) goes to ``discard``."""

    def done(finished: asyncio.Future[T]) -> None:
        if finished.cancelled() or finished.exception() is not None:
            return
        if discard is not None:
            discard(finished.result())

    task.cancel()
    task.add_done_callback(done)

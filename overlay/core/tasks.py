"""Fire-and-forget tasks that stay referenced until they finish, and that a stop cancels."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


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

"""core/tasks.unless_set: a step an event may cut short, and what it leaves behind. A relay
connection completed at the moment its attempt was cancelled (another path won) used to stay
open, its relay session paired and never ended (the NAT lab's relay-failover test then killed
the wrong relay: a CI failure)."""

from __future__ import annotations

import asyncio

import pytest

from overlay.core.tasks import unless_set


class Boom(Exception):
    pass


async def test_the_step_wins_when_the_event_stays_clear() -> None:
    assert await unless_set(asyncio.sleep(0, "done"), asyncio.Event(), Boom()) == "done"


async def test_the_event_cuts_the_step_short_and_discards_a_late_result() -> None:
    stop, release = asyncio.Event(), asyncio.Event()
    discarded: list[str] = []

    async def step() -> str:
        try:
            await release.wait()
        except asyncio.CancelledError:
            return "opened anyway"  # (a step that finishes what it had under way)
        return "never"

    running = asyncio.ensure_future(unless_set(step(), stop, Boom(), discarded.append))
    await asyncio.sleep(0)
    stop.set()
    with pytest.raises(Boom):
        await running
    await asyncio.sleep(0)
    assert discarded == ["opened anyway"]


async def test_a_result_that_comes_as_the_caller_is_cancelled_is_discarded() -> None:
    go = asyncio.Event()
    discarded: list[str] = []

    async def step() -> str:
        await go.wait()
        return "connection"

    running = asyncio.ensure_future(unless_set(step(), asyncio.Event(), Boom(),
                                               discarded.append))
    await asyncio.sleep(0)
    go.set()  # the step completes in the next turn ...
    running.cancel()  # ... and its caller is cancelled before it can take the result
    with pytest.raises(asyncio.CancelledError):
        await running
    for _ in range(3):
        await asyncio.sleep(0)
    assert discarded == ["connection"]

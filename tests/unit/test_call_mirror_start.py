"""The start of a call on a TCP stream that awaits its mirror (issue 15): before the mirror
is up (about 0.4 s in) a stall of the stream has no copy to cover it, so the jitter buffer
keeps a deep start target, and falls back to the stream's floor once the mirror is up (or
after STREAM_START_S without one). Real loopback TCP connections."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

from overlay.call.session import CallSession
from overlay.call.stream_io import (
    STREAM_MIN_TARGET_MS,
    STREAM_START_S,
    STREAM_START_TARGET_MS,
    StreamCall,
)
from tests.unit.test_call_mirror_hangup import tcp_pair, until

SECRET = bytes(range(32))
CALL_ID = bytes(8)


async def start_call(stack: AsyncExitStack, *, awaits_mirror: bool
                     ) -> tuple[StreamCall, StreamCall, asyncio.Future[object]]:
    a_main, b_main = await tcp_pair(stack)
    now = time.monotonic()
    caller = StreamCall(CallSession(SECRET, CALL_ID, caller=True, now=now, path="direct-tcp"),
                        a_main)
    callee = StreamCall(CallSession(SECRET, CALL_ID, caller=False, now=now, path="direct-tcp"),
                        b_main, awaits_mirror=awaits_mirror)
    both: asyncio.Future[object] = asyncio.ensure_future(
        asyncio.gather(caller.run(STREAM_START_S + 2.0), callee.run(STREAM_START_S + 2.0)))
    return caller, callee, both


async def test_the_start_target_holds_until_the_mirror_is_up() -> None:
    async with AsyncExitStack() as stack:
        caller, callee, both = await start_call(stack, awaits_mirror=True)
        buffer = callee.session.buffer
        await until(lambda: buffer.stats.played >= 10, 5.0)
        assert buffer.delay_ms >= STREAM_START_TARGET_MS - 10  # deep while no copy covers
        a_mirror, b_mirror = await tcp_pair(stack)
        caller.add_mirror(a_mirror)
        callee.add_mirror(b_mirror)
        assert buffer.min_target_ms == STREAM_MIN_TARGET_MS
        mirrored = time.monotonic()
        await until(lambda: buffer.delay_ms <= STREAM_MIN_TARGET_MS + 10, 3.0)
        assert time.monotonic() - mirrored < STREAM_START_S  # sooner than without a mirror
        await both
    assert buffer.stats.late == 0


async def test_without_a_mirror_the_start_target_ends_after_its_time() -> None:
    async with AsyncExitStack() as stack:
        _, callee, both = await start_call(stack, awaits_mirror=True)
        buffer = callee.session.buffer
        await until(lambda: buffer.stats.played >= 10, 5.0)
        assert buffer.min_target_ms == STREAM_START_TARGET_MS
        await until(lambda: buffer.min_target_ms == STREAM_MIN_TARGET_MS, STREAM_START_S + 1)
        await both
        assert buffer.delay_ms <= STREAM_MIN_TARGET_MS + 10


async def test_a_call_that_awaits_no_mirror_starts_at_the_streams_floor() -> None:
    async with AsyncExitStack() as stack:
        _, b_main = await tcp_pair(stack)
        session = CallSession(SECRET, CALL_ID, caller=False, now=0.0, path="direct-tcp")
        StreamCall(session, b_main)
        assert session.buffer.min_target_ms == STREAM_MIN_TARGET_MS

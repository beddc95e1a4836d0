"""The callee of a call on a TCP relay takes the caller's ``MIRROR`` mark on a second relay
path even when it arrives before the ``SELECT`` on the first: the caller sends the SELECT,
then the MIRROR, but on paths through two different relays, so either may come first. The
callee used to close the mirror path as unwanted when the mark came first (the race had not
selected yet), and the call, with no mirror, ended when its relay was killed
(``tests/process/test_call_failover.py`` failed about one run in two). Real loopback TCP
connections stand in for the two relay paths (the race's selection logic is under test, not
the relays)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from overlay.media.connect import connect_as_responder
from overlay.media.late_paths import LateDirect
from overlay.media.selection import MIRROR, SELECT
from overlay.media.stream import MediaStream
from tests.helpers.stream_pairs import tcp_stream_pair, unsecured


async def test_a_mirror_mark_that_comes_before_the_select_is_kept() -> None:
    (caller0, callee0) = await tcp_stream_pair(path="relay")
    (caller1, callee1) = await tcp_stream_pair(path="relay")
    ready = {"relay-0": asyncio.Event(), "relay-1": asyncio.Event()}

    def attempt(name: str, stream: MediaStream) -> Callable[[], Awaitable[MediaStream]]:
        async def run() -> MediaStream:
            ready[name].set()
            return stream
        return run

    late = LateDirect(None, keep_relays=True)
    responding = asyncio.ensure_future(connect_as_responder(
        {"relay-0": attempt("relay-0", callee0), "relay-1": attempt("relay-1", callee1)},
        unsecured, timeout=10.0, staggers={"relay-0": 0.0, "relay-1": 0.0}, late=late))
    await asyncio.gather(*(e.wait() for e in ready.values()))
    await caller1.send(MIRROR)  # the mark first, on the other relay's path
    for _ in range(20):  # the callee reads it before any SELECT
        await asyncio.sleep(0)
    await caller0.send(SELECT + b"frames")
    stream, _ = await asyncio.wait_for(responding, 5.0)
    assert await stream.recv(6) == b"frames"
    name, mirror = await asyncio.wait_for(late.next_mirror(), 5.0)
    assert name == "relay-1"
    await caller1.send(b"copy")  # the mirror path is open and read by the callee
    assert await asyncio.wait_for(mirror.recv(4), 5.0) == b"copy"
    late.close()
    for s in (caller0, caller1, callee0, callee1):
        await s.close()

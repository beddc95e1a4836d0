"""A direct path that authenticated by the time the race selects wins over a relay that
authenticated a moment before it: the race used to select the relay and close the direct
path (for a file: the transfer then went by the relay and moved to whatever direct path came
next, a birthday punch in the lab's ``symmetric->public`` pair, instead of the direct TCP
connection it already had: a CI failure). Real loopback TCP connections stand in for the
paths (the race's choice is under test)."""

from __future__ import annotations

import asyncio

from overlay.media.connect import connect_as_initiator
from overlay.media.late_paths import LateDirect
from overlay.media.selection import SELECT
from overlay.media.stream import MediaStream
from tests.helpers.stream_pairs import ended, tcp_stream_pair, unsecured


async def race(late: LateDirect | None) -> None:
    relay_ours, relay_far = await tcp_stream_pair(path="relay")
    tcp_ours, tcp_far = await tcp_stream_pair()
    relay_done = asyncio.Event()

    async def relay() -> MediaStream:
        relay_done.set()
        return relay_ours

    async def tcp_dial() -> MediaStream:  # authenticates in the same turn, just after
        await relay_done.wait()
        return tcp_ours

    winner, timeline = await connect_as_initiator(
        {"tcp-dial-0": tcp_dial, "relay-0": relay}, unsecured, timeout=10.0,
        staggers={"relay": 0.0}, late=late)
    events = [e for _, e in timeline.events]
    assert events.index("relay-0: authenticated") < events.index(
        "tcp-dial-0: authenticated"), events
    assert timeline.selected == "tcp-dial-0" and winner is tcp_ours
    assert await asyncio.wait_for(tcp_far.recv(len(SELECT)), 5.0) == SELECT
    # the relay's path is closed at once (a TCP stand-in ends with a reset)
    assert await ended(relay_far)
    if late is not None:
        late.close()
    for stream in (relay_ours, relay_far, tcp_ours, tcp_far):
        await stream.close()


async def test_a_direct_path_done_with_the_relay_is_selected() -> None:
    await race(None)


async def test_a_files_race_takes_the_direct_path_not_the_relay_first() -> None:
    await race(LateDirect(30.0))  # a file's: relay first, a direct path later moves it

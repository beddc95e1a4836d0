"""A call on a TCP stream mirrors its frames on a relay path (issue 15: on TCP one lost
segment holds every later frame back, so a call with no UDP path sends a copy of each frame
on a second TCP connection, through a supernode's relay). Real loopback paths: alice's and
bob's races have direct TCP and the supernode's relay and no UDP path; the call starts on
direct TCP, the relay path completes after the selection and becomes the call's mirror
(``MIRROR``), and each side receives copies on it. Then the direct TCP connection is reset
mid-call: the call goes on through the mirror at once, its lines say ``relay``, and the
longest gap in received audio stays under 200 ms on both sides."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from overlay.client.calls import Calls
from overlay.media.path_opening import CALL_PREFER_UDP_S, OpenedPath
from overlay.media.stream import TcpByteStream
from tests.helpers.loopback_pair import loopback_pair
from tests.unit.test_call_upgrade import MAX_GAP_MS

SECONDS = 5.0
RESET_AT_S = 2.5


def tcp_under(stream: Any) -> TcpByteStream:
    """The TCP connection a secured path runs on (each wrapper names what it wraps ``raw``)."""
    while not isinstance(stream, TcpByteStream):
        stream = stream.raw
    return stream


async def test_a_call_on_direct_tcp_mirrors_on_a_relay_and_survives_a_reset(
        tmp_path: Path) -> None:
    async with loopback_pair(tmp_path) as pair:
        for attempts in (pair.a_attempts, pair.b_attempts):
            del attempts["udp-punch"]  # as between two TCP-only hosts
        (a_stream, a_tl, a_late), (b_stream, b_tl, b_late) = await pair.race(
            {"tcp": 0.0, "relay": 0.3}, prefer_udp_s=CALL_PREFER_UDP_S, relays=True)
        assert a_tl.selected == "tcp-dial-0" and a_stream.path == "direct-tcp", a_tl.events
        a_calls, b_calls = Calls(pair.a), Calls(pair.b)
        a_lines: list[Any] = []

        async def reset_direct_tcp() -> None:
            await asyncio.sleep(RESET_AT_S)  # the call's own clock: mid-call
            tcp_under(a_stream).writer.transport.abort()

        async def call() -> Any:
            resetting = asyncio.ensure_future(reset_direct_tcp())
            try:
                return await a_calls._run(
                    OpenedPath(pair.caller, pair.invite, pair.answer, a_stream, a_tl,
                               pair.shared, pair.transcript, a_late),
                    True, SECONDS, 24_000, a_calls._entry("bob", True), a_lines)
            finally:
                resetting.cancel()
                a_late.close()
                await a_stream.close()

        started = time.monotonic()
        a_final, _ = await asyncio.wait_for(asyncio.gather(
            call(),
            b_calls._run(OpenedPath(pair.callee, pair.invite, pair.answer, b_stream, b_tl,
                                    pair.shared, pair.transcript, b_late), False,
                         SECONDS + 30, 24_000, b_calls._entry("alice", False), [])),
            SECONDS + 20)
        took = time.monotonic() - started
        b_late.close()
        await b_stream.close()
    events = [e for _, e in a_tl.events]
    assert "mirror: relay-0" in events, events
    assert a_lines[0]["path"] == "direct-tcp", a_lines
    assert a_final["path"] == "relay" and a_final["seconds"] >= SECONDS - 0.1, a_final
    (a_entry,), (b_entry,) = a_calls.recent, b_calls.recent
    assert b_entry["line"]["path"] == "relay", b_entry
    assert a_final["frames_received"] >= 0.9 * SECONDS * 50, a_final
    assert took < SECONDS + 3, took  # it went on at once, not after a path-lost wait
    print(f"\ncall on direct-tcp mirrored on relay-0; direct TCP reset at {RESET_AT_S} s; "
          f"longest audio gap: caller {a_entry['gap_ms']} ms, callee {b_entry['gap_ms']} ms")
    assert a_entry["gap_ms"] < MAX_GAP_MS and b_entry["gap_ms"] < MAX_GAP_MS, \
        (a_entry, b_entry)

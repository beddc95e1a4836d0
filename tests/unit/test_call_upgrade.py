"""Which later path a call moves to (:func:`overlay.media.techniques.call_moves_to`), and calls
that move on real paths: one that starts on a real supernode's relay moves to a direct TCP
path that completes two seconds later (issue 15's upgrade), one that starts on direct TCP
moves to a punched UDP path (QUIC on loopback) that completes 2 s later (and a call's
race waits briefly for a UDP path after direct TCP); both sides' races keep their other
attempts
(``LateDirect(keep_relays=True)``, as ``open_path`` does for a call), both run the client's
call wiring (:class:`overlay.client.calls.Calls`); the lines after the move name the direct
path and no relay, and the longest gap in received audio stays under 200 ms on both sides."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from overlay.client.calls import Calls
from overlay.core.identity import Identity
from overlay.media.connect import (
    connect_as_initiator,
    connect_as_responder,
)
from overlay.media.late_paths import LateDirect
from overlay.media.path_opening import CALL_PREFER_UDP_S, OpenedPath
from overlay.media.signalling import transcript_hash
from overlay.media.techniques import call_moves_to
from tests.helpers.loopback_pair import loopback_pair
from tests.helpers.stream_pairs import direct_tcp_attempts
from tests.unit.test_relay_vouchers import offers, relay_supernode, services

SECONDS = 5.0
MAX_GAP_MS = 200.0

DIRECT_UDP = ("udp-punch", "udp-birthday")
DIRECT_TCP = ("tcp-dial-0", "tcp-dial-mapped-1", "tcp-dial-lan-0", "tcp-accept", "tcp-punch-0")
RELAYS = ("relay-0", "relay-udp-0", "relay-1", "relay-udp-1")


def test_a_call_moves_to_direct_udp_from_tcp_and_off_relays_only() -> None:
    # on direct TCP (head-of-line blocking): to direct UDP only
    for current in DIRECT_TCP:
        assert [n for n in DIRECT_UDP + DIRECT_TCP + RELAYS if call_moves_to(current, n)] \
            == list(DIRECT_UDP), current
    # on a relay (either kind): to the first direct path, as a file does
    for current in RELAYS:
        assert [n for n in DIRECT_UDP + DIRECT_TCP + RELAYS if call_moves_to(current, n)] \
            == list(DIRECT_UDP + DIRECT_TCP), current
    # on direct UDP: nowhere (later paths are spares)
    assert not any(call_moves_to(c, n) for c in DIRECT_UDP
                   for n in DIRECT_UDP + DIRECT_TCP + RELAYS)


async def test_a_call_moves_from_the_relay_to_a_later_direct_path(tmp_path: Path) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with relay_supernode() as node:
        a, b = services(tmp_path, alice, bob)
        await b.start()
        try:
            invite, answer, caller, callee = offers(node, alice, bob)
            shared = caller.keys.shared_secret(answer.ephemeral)
            transcript = transcript_hash(invite, answer)
            dial, accept = direct_tcp_attempts(b.listener, callee.session_id)

            staggers = {"relay": 0.0, "tcp": 2.0}  # the direct path comes 2 s later
            a_late, b_late = LateDirect(None, keep_relays=True), LateDirect(None, True)
            (a_stream, a_tl), (b_stream, b_tl) = await asyncio.gather(
                connect_as_initiator(
                    {**a.relays.attempts(caller, invite, answer), "tcp-dial-0": dial},
                    a.paths.securer(caller, shared, transcript), staggers=staggers,
                    late=a_late),
                connect_as_responder(
                    {**b.relays.attempts(callee, invite, answer), "tcp-accept": accept},
                    b.paths.securer(callee, shared, transcript), staggers=staggers,
                    late=b_late))
            assert a_stream.path == b_stream.path == "relay"
            a_calls, b_calls = Calls(a), Calls(b)
            a_lines: list[Any] = []
            started = time.monotonic()

            async def call() -> Any:
                try:
                    return await a_calls._run(
                        OpenedPath(caller, invite, answer, a_stream, a_tl, shared, transcript,
                                   a_late), True, SECONDS, 24_000, a_calls._entry("bob", True),
                        a_lines)
                finally:  # as open_path does: the caller ends the call by closing its paths
                    a_late.close()
                    await a_stream.close()

            a_final, _ = await asyncio.wait_for(asyncio.gather(
                call(),
                b_calls._run(OpenedPath(callee, invite, answer, b_stream, b_tl, shared,
                                        transcript, b_late), False, SECONDS + 30, 24_000,
                             b_calls._entry("alice", False), [])), SECONDS + 20)
            took = time.monotonic() - started
            b_late.close()
            await b_stream.close()
        finally:
            await b.stop()
    assert [ln["path"] for ln in a_lines[:1]] == ["relay"], a_lines
    assert a_lines[-1]["path"] == "direct-tcp" and a_lines[-1]["relay"] is None, a_lines
    assert a_final["path"] == "direct-tcp" and a_final["seconds"] >= SECONDS - 0.1, a_final
    (a_entry,), (b_entry,) = a_calls.recent, b_calls.recent
    assert b_entry["line"]["path"] == "direct-tcp", b_entry
    print(f"\ncall moved relay -> direct-tcp; longest audio gap: caller {a_entry['gap_ms']} ms,"
          f" callee {b_entry['gap_ms']} ms; {took:.2f} s")
    assert a_entry["gap_ms"] < MAX_GAP_MS and b_entry["gap_ms"] < MAX_GAP_MS, \
        (a_entry, b_entry)


async def test_a_call_moves_from_direct_tcp_to_a_later_udp_path(tmp_path: Path) -> None:
    async with loopback_pair(tmp_path) as pair:
        # the UDP path comes 2 s later: the call's brief wait for it has passed
        (a_stream, a_tl, a_late), (b_stream, b_tl, b_late) = await pair.race(
            {"tcp": 0.0, "udp": 2.0}, prefer_udp_s=CALL_PREFER_UDP_S)
        assert a_tl.selected == "tcp-dial-0" and b_tl.selected == "tcp-accept"
        assert a_stream.path == b_stream.path == "direct-tcp"
        a_calls, b_calls = Calls(pair.a), Calls(pair.b)
        a_lines: list[Any] = []

        async def call() -> Any:
            try:
                return await a_calls._run(
                    OpenedPath(pair.caller, pair.invite, pair.answer, a_stream, a_tl,
                               pair.shared, pair.transcript, a_late),
                    True, SECONDS, 24_000, a_calls._entry("bob", True), a_lines)
            finally:  # as open_path does: the caller ends the call by closing its paths
                a_late.close()
                await a_stream.close()

        a_final, _ = await asyncio.wait_for(asyncio.gather(
            call(),
            b_calls._run(OpenedPath(pair.callee, pair.invite, pair.answer, b_stream, b_tl,
                                    pair.shared, pair.transcript, b_late), False,
                         SECONDS + 30, 24_000, b_calls._entry("alice", False), [])),
            SECONDS + 20)
        b_late.close()
        await b_stream.close()
    assert "upgrade: udp-punch" in [e for _, e in a_tl.events], a_tl.events
    assert a_lines[0]["path"] == "direct-tcp", a_lines
    assert a_final["path"] == "udp-punch" and a_final["seconds"] >= SECONDS - 0.1, a_final
    (a_entry,), (b_entry,) = a_calls.recent, b_calls.recent
    assert b_entry["line"]["path"] == "udp-punch", b_entry
    assert a_final["frames_received"] >= 0.9 * SECONDS * 50, a_final
    print(f"\ncall moved direct-tcp -> udp-punch; longest audio gap: caller "
          f"{a_entry['gap_ms']} ms, callee {b_entry['gap_ms']} ms")
    assert a_entry["gap_ms"] < MAX_GAP_MS and b_entry["gap_ms"] < MAX_GAP_MS, \
        (a_entry, b_entry)


async def test_a_call_race_waits_briefly_for_direct_udp_after_direct_tcp(
        tmp_path: Path) -> None:
    """With the call's wait, a UDP path that authenticates 0.3 s after direct TCP and a relay
    is the one selected (the TCP path is kept as a spare, the relay session is closed: a call
    on a direct path holds none); without it, direct TCP is."""
    async with loopback_pair(tmp_path) as pair:
        (a_stream, a_tl, a_late), (b_stream, b_tl, b_late) = await pair.race(
            {"tcp": 0.0, "relay": 0.0, "udp": 0.3}, prefer_udp_s=CALL_PREFER_UDP_S,
            relays=True)
        try:
            assert a_tl.selected == b_tl.selected == "udp-punch", (a_tl.events, b_tl.events)
            assert a_stream.path == b_stream.path == "udp-punch"
            events = [e for _, e in a_tl.events]
            assert "waiting for a direct UDP path" in events
            assert "relay-0: authenticated" in events, events
            assert [n for n, _ in a_late.spares] == ["tcp-dial-0"]
        finally:
            for late, stream in ((a_late, a_stream), (b_late, b_stream)):
                late.close()
                await stream.close()
    async with loopback_pair(tmp_path / "without") as pair:
        (a_stream, a_tl, a_late), (b_stream, b_tl, b_late) = await pair.race(
            {"tcp": 0.0, "udp": 0.3})
        try:
            assert a_tl.selected == "tcp-dial-0" and b_tl.selected == "tcp-accept"
        finally:
            for late, stream in ((a_late, a_stream), (b_late, b_stream)):
                late.close()
                await stream.close()

"""A call that starts on a real supernode's relay moves to a direct TCP path that completes two
seconds later (issue 15's upgrade): both sides' races keep their other attempts
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
    LateDirect,
    MediaStream,
    connect_as_initiator,
    connect_as_responder,
)
from overlay.media.path_opening import OpenedPath
from overlay.media.signalling import transcript_hash
from overlay.media.tcp_listener import dial_tcp
from tests.unit.test_relay_vouchers import offers, relay_supernode, services

SECONDS = 5.0
MAX_GAP_MS = 200.0


async def test_a_call_moves_from_the_relay_to_a_later_direct_path(tmp_path: Path) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with relay_supernode() as node:
        a, b = services(tmp_path, alice, bob)
        await b.start()
        try:
            invite, answer, caller, callee = offers(node, alice, bob)
            shared = caller.keys.shared_secret(answer.ephemeral)
            transcript = transcript_hash(invite, answer)
            queue = b.listener.expect(callee.session_id)

            async def dial() -> MediaStream:
                return await dial_tcp("127.0.0.1", b.listener.port, caller.session_id)

            async def accept() -> MediaStream:
                return await queue.get()

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

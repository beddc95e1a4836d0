"""Alice's and Bob's media services on loopback with a signed invite and answer, and each
side's direct attempts (TCP, a punched QUIC path), raced as the media service races them: for
tests of what runs on a path and of moves between paths."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from overlay.core.identity import Identity
from overlay.media.connect import (
    Attempt,
    MediaStream,
    Timeline,
    connect_as_initiator,
    connect_as_responder,
)
from overlay.media.late_paths import LateDirect
from overlay.media.media_socket import MediaSocket
from overlay.media.quic.connect import udp_path
from overlay.media.secure_stream import InviteSalt, new_path_salt
from overlay.media.service import MediaService
from overlay.media.session import Session
from overlay.media.signalling import Offer, transcript_hash
from tests.helpers.stream_pairs import direct_tcp_attempts
from tests.unit.test_relay_vouchers import offers, relay_supernode, services


@dataclass
class LoopbackPair:
    """Alice's and Bob's media services with a signed invite and answer, and each side's
    direct attempts on loopback: TCP (Alice dials Bob's listener) and a punched UDP path
    (QUIC), as the path race runs them."""

    a: MediaService
    b: MediaService
    invite: Offer
    answer: Offer
    caller: Session
    callee: Session
    shared: bytes
    transcript: bytes
    a_attempts: dict[str, Attempt]
    b_attempts: dict[str, Attempt]

    async def race(self, staggers: dict[str, float], prefer_udp_s: float = 0.0,
                   relays: bool = False, lates: tuple[LateDirect, LateDirect] | None = None,
                   ) -> tuple[tuple[MediaStream, Timeline, LateDirect],
                              tuple[MediaStream, Timeline, LateDirect]]:
        """Both sides' races, each with a call's :class:`LateDirect` (or ``lates``: the
        caller's and the callee's; ``relays``: the supernode's relay attempts too)."""
        a_attempts, b_attempts = self.a_attempts, self.b_attempts
        if relays:
            a_attempts = {**self.a.relays.attempts(self.caller, self.invite, self.answer),
                          **a_attempts}
            b_attempts = {**self.b.relays.attempts(self.callee, self.invite, self.answer),
                          **b_attempts}
        a_late, b_late = lates or (LateDirect(None, keep_relays=True), LateDirect(None, True))
        (a_stream, a_tl), (b_stream, b_tl) = await asyncio.gather(
            connect_as_initiator(a_attempts,
                                 self.a.paths.securer(self.caller, self.shared, self.transcript),
                                 staggers=staggers, late=a_late, prefer_udp_s=prefer_udp_s),
            connect_as_responder(b_attempts,
                                 self.b.paths.securer(self.callee, self.shared, self.transcript),
                                 staggers=staggers, late=b_late))
        return (a_stream, a_tl, a_late), (b_stream, b_tl, b_late)


@contextlib.asynccontextmanager
async def loopback_pair(tmp_path: Path, zero_rtt: bool = False) -> AsyncIterator[LoopbackPair]:
    """The pair, torn down on leaving; with ``zero_rtt``, the invite carries a path salt and
    the caller's QUIC opens with 0-RTT (a file's punched path, secured caller first)."""
    alice, bob = Identity.generate(), Identity.generate()
    async with relay_supernode() as node:  # for the offers only: no relay attempt runs
        a, b = services(tmp_path, alice, bob)
        await b.start()
        ua = await MediaSocket.open("127.0.0.1", 0)
        ub = await MediaSocket.open("127.0.0.1", 0)
        try:
            invite, answer, caller, callee = offers(node, alice, bob)
            if zero_rtt:
                salt = new_path_salt()
                caller.invite_salt, callee.invite_salt = InviteSalt(salt), InviteSalt(salt)
            shared = caller.keys.shared_secret(answer.ephemeral)
            transcript = transcript_hash(invite, answer)
            dial, accept = direct_tcp_attempts(b.listener, callee.session_id)

            async def punch(initiator: bool) -> MediaStream:
                ours, theirs = (ua, ub) if initiator else (ub, ua)
                return await udp_path(ours, caller.session_id, shared, transcript, initiator,
                                      [ours.local_address], [theirs.local_address],
                                      zero_rtt=zero_rtt and initiator)

            async def a_punch() -> MediaStream:
                return await punch(True)

            async def b_punch() -> MediaStream:
                return await punch(False)

            yield LoopbackPair(a, b, invite, answer, caller, callee, shared, transcript,
                               {"tcp-dial-0": dial, "udp-punch": a_punch},
                               {"tcp-accept": accept, "udp-punch": b_punch})
        finally:
            await ua.close()
            await ub.close()
            await b.stop()

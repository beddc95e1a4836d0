"""The relays of a path race: which relays an invite names (ranked from the signed supernode
directory, :mod:`.relay_selector`), one attempt per relay it names (with the relay voucher
both sides signed, :mod:`.relay_vouchers`), and a reservation over our attachment where a
peer signs no vouchers.
"""

from __future__ import annotations

import asyncio
import os

from overlay.attach.adapter import ClientSession, SessionError
from overlay.core import records
from overlay.core.logs import get_logger
from overlay.core.vivaldi import for_prediction
from overlay.media import call_relays, candidate_policy, relay_selector, transport_hooks
from overlay.media.attachment import AttachmentPort
from overlay.media.connect import Attempt
from overlay.media.errors import PathLost
from overlay.media.paths import Paths
from overlay.media.relay_preconnect import RelayPreconnect
from overlay.media.relay_selector import RelayHistory
from overlay.media.relay_vouchers import voucher_for
from overlay.media.session import Session
from overlay.media.signalling import CALL, Offer

log = get_logger(__name__)

#: the rate a file transfer asks a relay to reserve: 0 takes the relay's per-session cap
RELAY_RATE_BPS = 0


class RelayPaths:
    """Relay choice and relay attempts for one client (``paths``: its own addresses)."""

    def __init__(self, attachment: AttachmentPort, paths: Paths) -> None:
        self.attachment = attachment
        self.paths = paths
        #: how relays did for us (a relay that failed mid-transfer is ranked lower)
        self.history = RelayHistory()

    @staticmethod
    async def directory(session: ClientSession) -> list[records.SignedRecord] | None:
        """The signed supernode directory (None when it cannot be had)."""
        try:
            return await session.directory()
        except SessionError as exc:
            log.info("relay_directory_unavailable", error=str(exc))
            return None

    def choose(
        self, session: ClientSession, directory: list[records.SignedRecord] | None,
        target: records.PresenceRecord, exclude: set[bytes], call: bool = False,
    ) -> tuple[tuple[tuple[str, int, bytes], ...], bytes]:
        """The best few relays for this session, from the signed supernode directory (for a
        ``call``: latency first, then spare budget; :mod:`.relay_selector`)."""
        if directory is None:
            return (), b""
        coords = {s.record.node_key: for_prediction(s.record.coords)
                  for s in directory if isinstance(s.record, records.SupernodeRecord)}
        ranked = relay_selector.rank(
            relay_selector.candidates(directory, RELAY_RATE_BPS),
            caller_rtt=self.attachment.relay_rtts(), caller_coords=coords.get(session.node_key),
            callee_coords=coords.get(target.supernode_key),
            callee_supernode=target.supernode_key, history=self.history,
            exclude=exclude, call=call,
        )[: relay_selector.TOP]
        return tuple((c.host, c.port, c.node_key) for c in ranked), os.urandom(32)

    def attempts(self, s: Session, offer: Offer, answer: Offer,
                 rate_bps: int = RELAY_RATE_BPS, stop_pairing: asyncio.Event | None = None,
                 preconnect: RelayPreconnect | None = None) -> dict[str, Attempt]:
        """One attempt per relay the invite names: the first relay that admits the session
        and pairs both halves wins the race like any other path. The caller's hello carries
        the voucher both signed (``answer``, ours or the callee's, has the callee's
        countersignatures); where there is none (a peer that does not sign vouchers), a
        relay that is our own supernode is reserved over our attachment instead. A call also
        tries the relays' datagram relays (:mod:`.call_relays`). ``stop_pairing`` (the
        callee's): set once the caller holds its spare relay session; the attempts not
        paired yet then stop (:func:`~.connect.connect_as_responder`). ``preconnect`` (the
        caller's): the relay connection it opened while waiting for the answer."""
        attempts: dict[str, Attempt] = {}
        dialable: set[int] = set()
        vouchers = bool(offer.relay_sigs) and bool(answer.relay_sigs)
        own = self.paths.own_reflexive()
        peer = offer.candidates.public_hosts()
        for i, (host, port, key) in enumerate(offer.relays):
            verdict = candidate_policy.decide(host, own, peer)
            if not verdict.dial:
                log.info("relay_dropped", session=s.session_id.hex(), host=host, port=port,
                         reason=verdict.reason)
                continue
            dialable.add(i)
            token = relay_selector.session_token(offer.relay_secret, key)
            voucher = voucher_for(offer, answer, i) if s.initiator else None
            attempts[f"relay-{i}"] = transport_hooks.relay_attempt(
                host, port, key, token, s.initiator, rate_bps, voucher=voucher,
                reserve=None if vouchers else self._reserver(key), stop_pairing=stop_pairing,
                preconnect=preconnect)
        if offer.purpose == CALL:
            attempts.update(call_relays.udp_relay_attempts(offer, answer, s.initiator,
                                                           rate_bps, dialable, stop_pairing))
        return attempts

    def _reserver(self, relay_key: bytes) -> transport_hooks.Reserve | None:
        """Reserving a relay session over our attachment, when the relay is our primary
        supernode (a reservation is made only where we are attached)."""
        session = self.attachment.primary_session()
        if session is None or session.node_key != relay_key:
            return None
        attached = session

        async def reserve(token_hash: bytes) -> None:
            try:
                reply = await attached.reserve_relay(token_hash)
            except SessionError as exc:
                raise PathLost(f"relay reservation failed: {exc}") from None
            if not reply.ok:
                raise PathLost(f"relay reservation refused: {reply.reason}")

        return reserve

"""Relays for calls: the datagram relay first, the TCP relay last (issue 15).

A call's path order: a direct UDP path (punched, mapped or public), then a supernode's
datagram relay (:mod:`overlay.media.relay_udp`: QUIC through it, the call's frames as QUIC
DATAGRAM frames), then its TCP relay (frames on the stream, the sender dropping what the
stream cannot take). The invite of a call names, for each relay it offers, the UDP port its
signed supernode record advertises (``Offer.relay_udp_ports``); both ends try a relay's
datagram relay when both can send UDP at all (neither's NAT type is ``"no-udp"``: each side's
binding check through the supernodes says so, and the answer carries the callee's) and the
answer countersigned the vouchers. The TCP relay's attempts start
:data:`TCP_RELAY_AFTER_UDP_S` after the datagram relay's, so a datagram relay that works
wins before they begin.

A relay session of a call asks the relay for :func:`call_relay_rate_bps`: what the call's
frames take both ways, times :data:`PATH_OVERHEAD` for the path's own bytes (QUIC's packet
headers and acknowledgements, or the secured stream's framing); the relay's budget B admits
as many calls as fit (a relay that is full refuses with ``budget``, and the race goes on at
the invite's other relays).
"""

from __future__ import annotations

import asyncio

from overlay.core.records import SignedRecord, SupernodeRecord
from overlay.media.connect import RELAY_STAGGER_S, Attempt
from overlay.media.relay_selector import session_token
from overlay.media.relay_udp import ATTEMPT_PREFIX, udp_relay_attempt
from overlay.media.relay_vouchers import voucher_for
from overlay.media.signalling import Offer

#: the TCP relay starts this long after the datagram relay, for a call that may use both
TCP_RELAY_AFTER_UDP_S = 1.5
#: what a relay session of a call reserves over its frames' rate: QUIC's headers, its ACK
#: packets and its handshake took 141 kbit/s for the 80 kbit/s of frames of a 24 kbit/s
#: call (1.76x, measured on loopback through a supernode's datagram relay); x3 leaves room
#: for the bursts of a stalled sender within the session bucket's 4 KiB
PATH_OVERHEAD = 3
NO_UDP = "no-udp"


def call_relay_rate_bps(frames_bps: int) -> int:
    """The rate a call asks a relay for, from its frames' rate both ways
    (:func:`overlay.call.session.relay_rate_bps`)."""
    return PATH_OVERHEAD * frames_bps


def udp_ports(directory: list[SignedRecord] | None,
              relays: tuple[tuple[str, int, bytes], ...]) -> tuple[int, ...]:
    """The datagram relay port each of ``relays`` advertises in its signed record (0: none),
    or () when none does."""
    advertised = {s.record.node_key: s.record.relay_udp_port for s in directory or ()
                  if isinstance(s.record, SupernodeRecord)}
    ports = tuple(advertised.get(key, 0) for _, _, key in relays)
    return ports if any(ports) else ()


def udp_relay_usable(invite: Offer, answer: Offer) -> bool:
    """Whether the call of ``invite`` tries its datagram relays: both sides send UDP and
    both signed the vouchers (a datagram relay admits on a voucher only)."""
    return (any(invite.relay_udp_ports)
            and NO_UDP not in (invite.candidates.nat, answer.candidates.nat)
            and bool(invite.relay_sigs) and bool(answer.relay_sigs))


def udp_relay_attempts(invite: Offer, answer: Offer, initiator: bool, rate_bps: int,
                       dialable: set[int], stop_pairing: asyncio.Event | None = None
                       ) -> dict[str, Attempt]:
    """One attempt per datagram relay of ``invite`` (of the relays whose index is in
    ``dialable``), named ``relay-udp-<index>``; ``stop_pairing``: the callee's, see
    :func:`~overlay.media.relay_udp.udp_relay_attempt`."""
    if not udp_relay_usable(invite, answer):
        return {}
    attempts: dict[str, Attempt] = {}
    for i, ((host, _, key), port) in enumerate(zip(invite.relays, invite.relay_udp_ports,
                                                   strict=False)):
        if not port or i not in dialable:
            continue
        voucher = voucher_for(invite, answer, i) if initiator else None
        if initiator and voucher is None:
            continue
        attempts[f"{ATTEMPT_PREFIX}-{i}"] = udp_relay_attempt(
            host, port, key, session_token(invite.relay_secret, key), initiator, rate_bps,
            voucher=voucher, stop_pairing=stop_pairing)
    return attempts


def call_staggers(staggers: dict[str, float], attempts: dict[str, Attempt]
                  ) -> dict[str, float]:
    """``staggers`` with the datagram relay at the relay's delay and the TCP relay
    :data:`TCP_RELAY_AFTER_UDP_S` later, when there are datagram relay attempts."""
    if not any(name.startswith(ATTEMPT_PREFIX) for name in attempts):
        return staggers
    relay = staggers.get("relay", RELAY_STAGGER_S)
    # first: the stagger of an attempt is that of the first kind its name starts with
    return {ATTEMPT_PREFIX: relay, **staggers, "relay": relay + TCP_RELAY_AFTER_UDP_S}

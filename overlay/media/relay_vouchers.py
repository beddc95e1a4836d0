"""The relay vouchers of a call (sans-IO): the caller's signatures in its invite, the
callee's countersignatures in its answer, and the voucher each side's hello carries.

For every relay the invite names, both users sign the statement of
:mod:`overlay.relay.voucher` (that relay, the hash of that relay's token, an expiry, the
caller's and the callee's keys). The caller signs for its whole wait for an answer plus
:data:`VOUCHER_MARGIN_S` for the path race; the callee countersigns only a sane expiry.
"""

from __future__ import annotations

from overlay.core.identity import Identity
from overlay.media.relay_selector import session_token
from overlay.media.signalling import Offer
from overlay.relay.voucher import (
    CLOCK_SKEW_S,
    MAX_VOUCHER_LIFETIME_S,
    Statement,
    Voucher,
    statement_for,
)

#: after the answer, how long both sides have to reach a relay
VOUCHER_MARGIN_S = 120


def _statement(relay_key: bytes, secret: bytes, expires: int, caller_key: bytes,
               callee_key: bytes) -> Statement:
    return statement_for(relay_key, session_token(secret, relay_key), expires, caller_key,
                         callee_key)


def caller_signatures(identity: Identity, relays: tuple[tuple[str, int, bytes], ...],
                      secret: bytes, callee_key: bytes, expires: int) -> tuple[bytes, ...]:
    """The caller's signature for each relay of its invite (in their order)."""
    return tuple(_statement(key, secret, expires, identity.public_key, callee_key)
                 .sign(identity) for _, _, key in relays)


def callee_signatures(identity: Identity, invite: Offer, now: float) -> tuple[bytes, ...]:
    """The callee's countersignatures for ``invite``'s relays; none when the invite carries
    no caller signatures for them, or asks for an expiry a relay would refuse anyway."""
    if (not invite.relays or len(invite.relay_sigs) != len(invite.relays)
            or not now < invite.relay_expires <= now + MAX_VOUCHER_LIFETIME_S + CLOCK_SKEW_S):
        return ()
    return tuple(_statement(key, invite.relay_secret, invite.relay_expires, invite.from_key,
                            identity.public_key).sign(identity) for _, _, key in invite.relays)


def voucher_for(invite: Offer, answer: Offer, relay_index: int) -> bytes | None:
    """The voucher for the ``relay_index``-th relay of ``invite`` (the caller's hello), or
    None when the answer carries no countersignature for it."""
    if (len(invite.relay_sigs) != len(invite.relays) or len(answer.relay_sigs) != len(invite.relays)
            or answer.relay_expires != invite.relay_expires):
        return None
    key = invite.relays[relay_index][2]
    statement = _statement(key, invite.relay_secret, invite.relay_expires, invite.from_key,
                           answer.from_key)
    return Voucher(statement, invite.relay_sigs[relay_index],
                   answer.relay_sigs[relay_index]).to_bytes()

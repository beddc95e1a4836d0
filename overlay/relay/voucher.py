"""Relay vouchers (sans-IO): the two users of a call ask one relay for one session.

The caller signs, in its invite, a statement naming the relay, the session's token (by its
hash) and an expiry, and the callee countersigns the same statement in its answer; the
caller's hello carries both signatures. The relay admits a caller with a voucher that names
this relay and this token, is not expired (nor valid for longer than
:data:`MAX_VOUCHER_LIFETIME_S` from now), and is signed by two different keys. Wire
(:data:`~overlay.relay.protocol.VOUCHER_BYTES` = 264 bytes)::

    relay_key(32) | token_hash(32) | expires_at(8, Unix seconds) | caller_key(32)
        | callee_key(32) | caller_sig(64) | callee_sig(64)

each signature ``ed25519(key, "overlay/relay-voucher/v1\\0" | the first 136 bytes)``, and
``token_hash = BLAKE2b-256(token, person "ovl-relay-token")``.

What a voucher proves: two keys agreed on this session at this relay. Keys cost nothing, so it
does not prove that two real users are talking; the relay bounds what vouchers can take with
per-key and per-/24 limits (:mod:`overlay.relay.admission`), see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from overlay.core.identity import PUBLIC_KEY_BYTES, Identity, verify_signature
from overlay.relay.errors import RelayError
from overlay.relay.protocol import (
    REASON_BAD_VOUCHER,
    REASON_VOUCHER_EXPIRED,
    TOKEN_BYTES,
    VOUCHER_BYTES,
)

DOMAIN = b"overlay/relay-voucher/v1\x00"
#: a relay refuses a voucher that would stay valid longer than this (the caller signs for its
#: longest wait for an answer, 600 s, plus the path race)
MAX_VOUCHER_LIFETIME_S = 900
#: the clock difference a relay tolerates on the upper bound of ``expires_at`` (none on
#: expiry: the caller signs for its whole wait plus a margin, see :mod:`overlay.media.path_opening`)
CLOCK_SKEW_S = 60
_STATEMENT = struct.Struct(f">{PUBLIC_KEY_BYTES}s32sQ{PUBLIC_KEY_BYTES}s{PUBLIC_KEY_BYTES}s")
SIGNATURE_BYTES = 64


class VoucherRefused(RelayError):
    """A voucher the relay does not take; ``reason`` is the refusal it answers."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def token_hash(token: bytes) -> bytes:
    """What a voucher (or a reservation) names a session by."""
    return hashlib.blake2b(token, digest_size=32, person=b"ovl-relay-token").digest()


@dataclass(frozen=True)
class Statement:
    """What both users sign: this relay, this token, until then, between these two keys."""

    relay_key: bytes
    token_hash: bytes
    expires_at: int
    caller_key: bytes
    callee_key: bytes

    def to_bytes(self) -> bytes:
        return _STATEMENT.pack(self.relay_key, self.token_hash, self.expires_at,
                               self.caller_key, self.callee_key)

    def sign(self, identity: Identity) -> bytes:
        """One of the two signatures (``identity`` is the caller or the callee)."""
        if identity.public_key not in (self.caller_key, self.callee_key):
            raise ValueError("a voucher is signed by its caller or its callee")
        return identity.sign(DOMAIN + self.to_bytes())

    def verifies(self, key: bytes, signature: bytes) -> bool:
        return verify_signature(key, DOMAIN + self.to_bytes(), signature)


@dataclass(frozen=True)
class Voucher:
    statement: Statement
    caller_sig: bytes
    callee_sig: bytes

    def to_bytes(self) -> bytes:
        return self.statement.to_bytes() + self.caller_sig + self.callee_sig

    @property
    def keys(self) -> tuple[bytes, bytes]:
        return self.statement.caller_key, self.statement.callee_key


def statement_for(relay_key: bytes, token: bytes, expires_at: int, caller_key: bytes,
                  callee_key: bytes) -> Statement:
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"a relay token is {TOKEN_BYTES} bytes")
    return Statement(relay_key, token_hash(token), expires_at, caller_key, callee_key)


def decode_voucher(data: bytes) -> Voucher:
    """The voucher's fields (no check); raises :class:`VoucherRefused` on a wrong length."""
    if len(data) != VOUCHER_BYTES:
        raise VoucherRefused(REASON_BAD_VOUCHER, f"a voucher is {VOUCHER_BYTES} bytes")
    statement = Statement(*_STATEMENT.unpack_from(data))
    at = _STATEMENT.size
    return Voucher(statement, data[at:at + SIGNATURE_BYTES], data[at + SIGNATURE_BYTES:])


def check_voucher(data: bytes, relay_key: bytes, token: bytes, now: float) -> Voucher:
    """The voucher in a caller's hello, checked as the relay ``relay_key`` at wall-clock
    ``now``; raises :class:`VoucherRefused` (``bad voucher``, ``voucher expired``)."""
    voucher = decode_voucher(data)
    st = voucher.statement
    if st.relay_key != relay_key:
        raise VoucherRefused(REASON_BAD_VOUCHER, "it names another relay")
    if st.token_hash != token_hash(token):
        raise VoucherRefused(REASON_BAD_VOUCHER, "it names another token")
    if st.caller_key == st.callee_key:
        raise VoucherRefused(REASON_BAD_VOUCHER, "one key signed for both ends")
    if st.expires_at <= now:
        raise VoucherRefused(REASON_VOUCHER_EXPIRED, f"expired at {st.expires_at}")
    if st.expires_at > now + MAX_VOUCHER_LIFETIME_S + CLOCK_SKEW_S:
        raise VoucherRefused(REASON_BAD_VOUCHER,
                             f"valid for more than {MAX_VOUCHER_LIFETIME_S} s")
    if not st.verifies(st.caller_key, voucher.caller_sig):
        raise VoucherRefused(REASON_BAD_VOUCHER, "the caller's signature does not verify")
    if not st.verifies(st.callee_key, voucher.callee_sig):
        raise VoucherRefused(REASON_BAD_VOUCHER, "the callee's signature does not verify")
    return voucher

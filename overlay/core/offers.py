"""The outer form of a signed offer (invite or answer) between two users.

An offer is ``msgpack([body, signature])`` with ``signature = ed25519(user key, domain +
body)`` and the domain ``overlay/invite/v1\\0`` or ``overlay/answer/v1\\0``. The body is the
media layer's (:mod:`overlay.media.signalling`); supernodes only check, with
:func:`signed_by`, that a signal they carry is an offer signed by the key it claims to be from.
"""

from __future__ import annotations

from overlay.core.identity import verify_signature
from overlay.core.strict_msgpack import NotMsgpack, unpack_strict

INVITE_DOMAIN = b"overlay/invite/v1\x00"
ANSWER_DOMAIN = b"overlay/answer/v1\x00"
OFFER_DOMAINS = (INVITE_DOMAIN, ANSWER_DOMAIN)
#: an offer fits in one forwarded signal
MAX_OFFER_BYTES = 4096
#: a call's bitrate (bit/s): what ``overlay call --bitrate`` and an invite's ``bitrate_bps``
#: may ask for
MIN_BITRATE_BPS = 8_000
MAX_BITRATE_BPS = 256_000


def split_offer(wire: bytes) -> tuple[bytes, bytes] | None:
    """``(body, signature)`` of an offer's outer form, or None when it is not one."""
    if len(wire) > MAX_OFFER_BYTES:
        return None
    try:
        outer = unpack_strict(wire, max_len=MAX_OFFER_BYTES, max_array=2)
    except NotMsgpack:
        return None
    if (not isinstance(outer, list) or len(outer) != 2 or type(outer[0]) is not bytes
            or type(outer[1]) is not bytes):
        return None
    return outer[0], outer[1]


def signed_by(wire: bytes, key: bytes) -> bool:
    """Whether ``wire`` is an offer (invite or answer) signed by ``key``."""
    parts = split_offer(wire)
    if parts is None:
        return False
    body, signature = parts
    return any(verify_signature(key, domain + body, signature) for domain in OFFER_DOMAINS)

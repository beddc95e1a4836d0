"""Authenticated DHT datagrams (sans-IO), version 3.

Every datagram starts with the same 86 bytes::

    MAGIC(4) | kind(1) | msg_id(20) | sender_key(32) | recipient(20) | timestamp_ms(8) | flags(1)

and is authenticated one of two ways, which ``kind`` says:

* **signed** (kinds 0 request, 1 response): ``| ephemeral(32) | signature(64) | payload``.
  ``signature`` is ed25519 by ``sender_key`` over ``DOMAIN`` and every byte after the magic
  except the signature itself (kind, msg_id, recipient, timestamp_ms, flags, ephemeral,
  payload; ``sender_key`` is the verifying key). ``ephemeral`` is the sender's current X25519
  session key (:mod:`overlay.dht.sessions`), or 32 zero bytes for none (e.g. a client's
  binding request).
* **session** (kinds 2 request, 3 response): ``| sender_eph_id(8) | recipient_eph_id(8) |
  mac(16) | payload``. ``mac`` is keyed BLAKE2b-128 (person ``ovl-dht-mac-v3``) under the
  session key of the two ephemerals named by their ids, over every byte of the datagram but
  the mac itself (magic to recipient_eph_id, then the payload). Only the two nodes whose
  signed datagrams carried those ephemerals can compute that key.

The sender's node id is always derived from ``sender_key``; nobody picks it. ``recipient`` is
the node id of the node the datagram is for (a response: the requester's), or
:data:`ANY_RECIPIENT` when the sender knows only an address (signed only); ``timestamp_ms`` is
the sender's clock (Unix ms, big-endian unsigned). Both are checked by the receiver
(:mod:`overlay.dht.replay`) whichever way the datagram is authenticated, so a captured request
is refused by any other node, and by the same node outside the clock-skew window or twice.
``payload`` is msgpack: a request is ``[method, [args...]]`` (or ``[method, [args...],
cookie]``, :mod:`overlay.dht.amplification`); a response is the method's result.

Parsing (:func:`parse`) and authenticating (:func:`authenticate_signature`,
:func:`authenticate_mac`) are separate so the receiver can pick the session key between the
two; :func:`open_datagram` opens signed datagrams only (what a socket without sessions, e.g.
the media socket, can check). Datagrams from the stock ``kademlia`` package start with
0x00/0x01 and never match MAGIC; ``OVL1``/``OVL2`` datagrams are foreign too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

import msgpack

from overlay.core.identity import (
    NODE_ID_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    verify_signature,
)
from overlay.core.strict_msgpack import NotMsgpack, unpack_strict
from overlay.dht.errors import DHTError

MAGIC = b"OVL3"
DOMAIN = b"overlay/dht/v3\x00"
MAC_PERSON = b"ovl-dht-mac-v3"
MSG_ID_BYTES = 20
TIMESTAMP_BYTES = 8
EPHEMERAL_BYTES = 32
#: no ephemeral key offered (the sender keeps no sessions)
NO_EPHEMERAL = b"\x00" * EPHEMERAL_BYTES
EPH_ID_BYTES = 8
MAC_BYTES = 16
SESSION_KEY_BYTES = 32
#: the recipient of a request sent to an address whose key is not known yet (bootstrap)
ANY_RECIPIENT = b"\x00" * NODE_ID_BYTES
COMMON_BYTES = len(MAGIC) + 1 + MSG_ID_BYTES + PUBLIC_KEY_BYTES + NODE_ID_BYTES \
    + TIMESTAMP_BYTES + 1
SIGNED_HEADER_BYTES = COMMON_BYTES + EPHEMERAL_BYTES + SIGNATURE_BYTES
SESSION_HEADER_BYTES = COMMON_BYTES + 2 * EPH_ID_BYTES + MAC_BYTES
#: the larger header (the size bound below is the worst case)
HEADER_BYTES = SIGNED_HEADER_BYTES
#: Requests carry at most one record plus a key; anything larger is hostile.
MAX_REQUEST_PAYLOAD = 4096
#: Responses stay below the IPv4 UDP maximum.
MAX_RESPONSE_PAYLOAD = 60_000
MAX_DATAGRAM = HEADER_BYTES + MAX_RESPONSE_PAYLOAD
_SESSION_OFFSET = 2  # wire kind = Kind + 2 for session-authenticated datagrams


class Kind(IntEnum):
    REQUEST = 0
    RESPONSE = 1


class Flags(IntFlag):
    NONE = 0
    #: The sender is behind NAT: answer it, never put it in a routing table.
    CLIENT = 1


class EnvelopeError(DHTError):
    """A datagram was dropped. ``reason`` labels it for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


#: the members by wire value (calling an enum class costs ~1 µs, twice per datagram)
_KINDS = (Kind.REQUEST, Kind.RESPONSE)
_FLAGS = (Flags.NONE, Flags.CLIENT)


@dataclass(frozen=True, slots=True)
class SessionIds:
    """Which session key authenticated a datagram: the ids of both ephemerals."""

    sender_eph_id: bytes
    recipient_eph_id: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    msg_id: bytes
    sender_key: bytes
    flags: Flags
    payload: Any
    recipient: bytes = ANY_RECIPIENT
    timestamp_ms: int = 0
    #: a signed datagram's ephemeral (:data:`NO_EPHEMERAL` for none)
    ephemeral: bytes = NO_EPHEMERAL
    #: set when the datagram was authenticated by a session MAC instead of a signature
    session: SessionIds | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A datagram split into its fields, not yet authenticated."""

    kind: Kind
    msg_id: bytes
    sender_key: bytes
    recipient: bytes
    timestamp_ms: int
    flags: Flags
    #: signed: the ephemeral; session: None
    ephemeral: bytes | None
    session: SessionIds | None
    #: the signature or the MAC
    tag: bytes
    #: what the tag covers, the payload excluded (signed: after the magic; session: all)
    covered: bytes
    body: bytes


def new_msg_id() -> bytes:
    return os.urandom(MSG_ID_BYTES)


def _common(kind_byte: int, msg_id: bytes, sender_key: bytes, recipient: bytes,
            now: float | None, flags: Flags) -> bytes:
    if len(recipient) != NODE_ID_BYTES:
        raise ValueError("recipient is a 20-byte node id")
    stamp = int((time.time() if now is None else now) * 1000).to_bytes(TIMESTAMP_BYTES, "big")
    return MAGIC + bytes([kind_byte]) + msg_id + sender_key + recipient + stamp + bytes([flags])


def pack_body(kind: Kind, payload: Any) -> bytes:
    """A datagram's payload as msgpack, within its kind's size limit (else raise)."""
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    limit = MAX_REQUEST_PAYLOAD if kind is Kind.REQUEST else MAX_RESPONSE_PAYLOAD
    if len(body) > limit:
        raise EnvelopeError("oversized", f"{len(body)} byte payload exceeds {limit}")
    return body


def seal(
    identity: Identity, kind: Kind, msg_id: bytes, flags: Flags, payload: Any, *,
    recipient: bytes, now: float | None = None, ephemeral: bytes = NO_EPHEMERAL,
) -> bytes:
    """A signed datagram for ``recipient`` (a node id, or :data:`ANY_RECIPIENT`), stamped
    with ``now`` (Unix seconds; default the clock), offering ``ephemeral``."""
    return seal_body(identity, kind, msg_id, flags, pack_body(kind, payload),
                     recipient=recipient, now=now, ephemeral=ephemeral)


def seal_body(
    identity: Identity, kind: Kind, msg_id: bytes, flags: Flags, body: bytes, *,
    recipient: bytes, now: float | None = None, ephemeral: bytes = NO_EPHEMERAL,
) -> bytes:
    """:func:`seal` for a payload already packed by :func:`pack_body`."""
    if len(ephemeral) != EPHEMERAL_BYTES:
        raise ValueError("an ephemeral key is 32 bytes")
    head = _common(kind, msg_id, identity.public_key, recipient, now, flags) + ephemeral
    signature = identity.sign(DOMAIN + _signed_part(head) + body)
    return head + signature + body


def seal_session(
    session_key: bytes, sender_key: bytes, ids: SessionIds, kind: Kind, msg_id: bytes,
    flags: Flags, payload: Any, *, recipient: bytes, now: float | None = None,
) -> bytes:
    """A session-authenticated datagram from ``sender_key`` for ``recipient`` (a node id),
    under ``session_key`` (:mod:`overlay.dht.sessions`)."""
    return seal_session_body(session_key, sender_key, ids, kind, msg_id, flags,
                             pack_body(kind, payload), recipient=recipient, now=now)


def seal_session_body(
    session_key: bytes, sender_key: bytes, ids: SessionIds, kind: Kind, msg_id: bytes,
    flags: Flags, body: bytes, *, recipient: bytes, now: float | None = None,
) -> bytes:
    """:func:`seal_session` for a payload already packed by :func:`pack_body`."""
    if recipient == ANY_RECIPIENT:
        raise ValueError("a session datagram names its recipient")
    head = (_common(kind + _SESSION_OFFSET, msg_id, sender_key, recipient, now, flags)
            + ids.sender_eph_id + ids.recipient_eph_id)
    return head + session_mac(session_key, head, body) + body


def session_mac(session_key: bytes, covered: bytes, body: bytes) -> bytes:
    h = hashlib.blake2b(covered, key=session_key, digest_size=MAC_BYTES, person=MAC_PERSON)
    h.update(body)
    return h.digest()


def _signed_part(head: bytes) -> bytes:
    """The signed header minus the magic and the sender key (which verifies it)."""
    return head[4:25] + head[57:]


def parse(data: bytes) -> Parsed:
    """Split a datagram into its fields, or raise :class:`EnvelopeError`; nothing is
    authenticated yet."""
    if len(data) > MAX_DATAGRAM:
        raise EnvelopeError("oversized", f"{len(data)} bytes")
    if len(data) < COMMON_BYTES or data[:4] != MAGIC:
        raise EnvelopeError("foreign", "not an overlay datagram")
    kind_byte = data[4]
    if kind_byte > Kind.RESPONSE + _SESSION_OFFSET:
        raise EnvelopeError("malformed", f"unknown kind {kind_byte}")
    session = kind_byte >= _SESSION_OFFSET
    kind = _KINDS[kind_byte - _SESSION_OFFSET if session else kind_byte]
    header = SESSION_HEADER_BYTES if session else SIGNED_HEADER_BYTES
    if len(data) < header:
        raise EnvelopeError("foreign", "short overlay datagram")
    flags_byte = data[COMMON_BYTES - 1]
    if flags_byte & ~int(Flags.CLIENT):
        raise EnvelopeError("malformed", f"unknown flags {flags_byte:#x}")
    body = data[header:]
    limit = MAX_REQUEST_PAYLOAD if kind is Kind.REQUEST else MAX_RESPONSE_PAYLOAD
    if len(body) > limit:
        raise EnvelopeError("oversized", f"{len(body)} byte payload")
    msg_id, sender_key, recipient = data[5:25], data[25:57], data[57:77]
    stamp, flags = int.from_bytes(data[77:85], "big"), _FLAGS[flags_byte]
    if session:
        ids_end = COMMON_BYTES + 2 * EPH_ID_BYTES
        ids = SessionIds(data[COMMON_BYTES:COMMON_BYTES + EPH_ID_BYTES],
                         data[COMMON_BYTES + EPH_ID_BYTES:ids_end])
        return Parsed(kind, msg_id, sender_key, recipient, stamp, flags, None, ids,
                      data[ids_end:header], data[:ids_end], body)
    eph_end = COMMON_BYTES + EPHEMERAL_BYTES
    return Parsed(kind, msg_id, sender_key, recipient, stamp, flags, data[COMMON_BYTES:eph_end],
                  None, data[eph_end:header], _signed_part(data[:eph_end]), body)


def _decode(parsed: Parsed) -> Any:
    limit = MAX_REQUEST_PAYLOAD if parsed.kind is Kind.REQUEST else MAX_RESPONSE_PAYLOAD
    try:
        return unpack_strict(parsed.body, max_len=limit, max_array=256, max_map=8)
    except NotMsgpack as exc:
        raise EnvelopeError("malformed", f"payload: {exc}") from None


def authenticate_signature(parsed: Parsed) -> Envelope:
    """The envelope of a signed datagram whose signature verifies, or raise."""
    if parsed.ephemeral is None:
        raise EnvelopeError("no_session", "a session datagram has no signature")
    if not verify_signature(parsed.sender_key, DOMAIN + parsed.covered + parsed.body,
                            parsed.tag):
        raise EnvelopeError("bad_signature")
    return Envelope(parsed.kind, parsed.msg_id, parsed.sender_key, parsed.flags,
                    _decode(parsed), parsed.recipient, parsed.timestamp_ms, parsed.ephemeral)


def authenticate_mac(parsed: Parsed, session_key: bytes) -> Envelope:
    """The envelope of a session datagram whose MAC verifies under ``session_key``."""
    if parsed.session is None:
        raise EnvelopeError("malformed", "a signed datagram has no session MAC")
    if not hmac.compare_digest(parsed.tag, session_mac(session_key, parsed.covered,
                                                       parsed.body)):
        raise EnvelopeError("bad_mac")
    return Envelope(parsed.kind, parsed.msg_id, parsed.sender_key, parsed.flags,
                    _decode(parsed), parsed.recipient, parsed.timestamp_ms,
                    session=parsed.session)


def open_datagram(data: bytes) -> Envelope:
    """Parse and authenticate one signed datagram, or raise :class:`EnvelopeError` (a
    session datagram: ``no_session``, this caller keeps no sessions)."""
    return authenticate_signature(parse(data))

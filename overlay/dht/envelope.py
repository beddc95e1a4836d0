"""Authenticated DHT datagrams (sans-IO).

Layout::

    MAGIC(4) | kind(1) | msg_id(20) | sender_key(32) | flags(1) | signature(64) | payload

``signature`` is ed25519 by ``sender_key`` over ``DOMAIN + kind + msg_id + flags + payload``.
The sender's node id is always derived from ``sender_key``; nobody picks it. ``payload`` is
msgpack: a request is ``[method, [args...]]``; a response is the method's result.

Datagrams from the stock ``kademlia`` package start with 0x00/0x01 and never match MAGIC.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

import msgpack

from overlay.core.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from overlay.core.strict_msgpack import NotMsgpack, unpack_strict
from overlay.dht.errors import DHTError

MAGIC = b"OVL1"
DOMAIN = b"overlay/dht/v1\x00"
MSG_ID_BYTES = 20
HEADER_BYTES = len(MAGIC) + 1 + MSG_ID_BYTES + PUBLIC_KEY_BYTES + 1 + SIGNATURE_BYTES
#: Requests carry at most one record plus a key; anything larger is hostile.
MAX_REQUEST_PAYLOAD = 4096
#: Responses stay below the IPv4 UDP maximum.
MAX_RESPONSE_PAYLOAD = 60_000
MAX_DATAGRAM = HEADER_BYTES + MAX_RESPONSE_PAYLOAD


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


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    msg_id: bytes
    sender_key: bytes
    flags: Flags
    payload: Any


def new_msg_id() -> bytes:
    return os.urandom(MSG_ID_BYTES)


def seal(identity: Identity, kind: Kind, msg_id: bytes, flags: Flags, payload: Any) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    limit = MAX_REQUEST_PAYLOAD if kind is Kind.REQUEST else MAX_RESPONSE_PAYLOAD
    if len(body) > limit:
        raise EnvelopeError("oversized", f"{len(body)} byte payload exceeds {limit}")
    head = bytes([kind]) + msg_id + bytes([flags])
    signature = identity.sign(DOMAIN + head + body)
    return MAGIC + bytes([kind]) + msg_id + identity.public_key + bytes([flags]) + signature + body


def open_datagram(data: bytes) -> Envelope:
    """Parse and authenticate one datagram, or raise :class:`EnvelopeError`."""
    if len(data) > MAX_DATAGRAM:
        raise EnvelopeError("oversized", f"{len(data)} bytes")
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise EnvelopeError("foreign", "not an overlay datagram")
    kind_byte = data[4]
    if kind_byte not in (Kind.REQUEST, Kind.RESPONSE):
        raise EnvelopeError("malformed", f"unknown kind {kind_byte}")
    kind = Kind(kind_byte)
    pos = 5
    msg_id = data[pos : pos + MSG_ID_BYTES]
    pos += MSG_ID_BYTES
    sender_key = data[pos : pos + PUBLIC_KEY_BYTES]
    pos += PUBLIC_KEY_BYTES
    flags_byte = data[pos]
    pos += 1
    signature = data[pos : pos + SIGNATURE_BYTES]
    pos += SIGNATURE_BYTES
    body = data[pos:]
    limit = MAX_REQUEST_PAYLOAD if kind is Kind.REQUEST else MAX_RESPONSE_PAYLOAD
    if len(body) > limit:
        raise EnvelopeError("oversized", f"{len(body)} byte payload")
    if flags_byte & ~int(Flags.CLIENT):
        raise EnvelopeError("malformed", f"unknown flags {flags_byte:#x}")
    head = bytes([kind_byte]) + msg_id + bytes([flags_byte])
    if not verify_signature(sender_key, DOMAIN + head + body, signature):
        raise EnvelopeError("bad_signature")
    try:
        payload = unpack_strict(body, max_len=limit, max_array=256, max_map=8)
    except NotMsgpack as exc:
        raise EnvelopeError("malformed", f"payload: {exc}") from None
    return Envelope(kind, msg_id, sender_key, Flags(flags_byte), payload)

"""Authenticated DHT datagrams (sans-IO).

Layout::

    MAGIC(4) | kind(1) | msg_id(20) | sender_key(32) | recipient(20) | timestamp_ms(8)
    | flags(1) | signature(64) | payload

``signature`` is ed25519 by ``sender_key`` over
``DOMAIN + kind + msg_id + recipient + timestamp_ms + flags + payload``. The sender's node id
is always derived from ``sender_key``; nobody picks it. ``recipient`` is the node id of the
node the datagram is for (a response: the requester's), or :data:`ANY_RECIPIENT` when the
sender knows only an address; ``timestamp_ms`` is the sender's clock (Unix ms, big-endian
unsigned). Both are checked by the receiver (:mod:`overlay.dht.replay`), so a captured request
is refused by any other node, and by the same node outside the clock-skew window or twice.
``payload`` is msgpack: a request is ``[method, [args...]]`` (or ``[method, [args...],
cookie]``, :mod:`overlay.dht.amplification`); a response is the method's result.

Datagrams from the stock ``kademlia`` package start with 0x00/0x01 and never match MAGIC.
"""

from __future__ import annotations

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

MAGIC = b"OVL2"
DOMAIN = b"overlay/dht/v2\x00"
MSG_ID_BYTES = 20
TIMESTAMP_BYTES = 8
#: the recipient of a request sent to an address whose key is not known yet (bootstrap)
ANY_RECIPIENT = b"\x00" * NODE_ID_BYTES
HEADER_BYTES = (len(MAGIC) + 1 + MSG_ID_BYTES + PUBLIC_KEY_BYTES + NODE_ID_BYTES
                + TIMESTAMP_BYTES + 1 + SIGNATURE_BYTES)
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
    recipient: bytes = ANY_RECIPIENT
    timestamp_ms: int = 0


def new_msg_id() -> bytes:
    return os.urandom(MSG_ID_BYTES)


def seal(
    identity: Identity, kind: Kind, msg_id: bytes, flags: Flags, payload: Any, *,
    recipient: bytes, now: float | None = None,
) -> bytes:
    """A signed datagram for ``recipient`` (a node id, or :data:`ANY_RECIPIENT`), stamped
    with ``now`` (Unix seconds; default the clock)."""
    if len(recipient) != NODE_ID_BYTES:
        raise ValueError("recipient is a 20-byte node id")
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    limit = MAX_REQUEST_PAYLOAD if kind is Kind.REQUEST else MAX_RESPONSE_PAYLOAD
    if len(body) > limit:
        raise EnvelopeError("oversized", f"{len(body)} byte payload exceeds {limit}")
    stamp = int((time.time() if now is None else now) * 1000).to_bytes(TIMESTAMP_BYTES, "big")
    signed = bytes([kind]) + msg_id + recipient + stamp + bytes([flags])
    signature = identity.sign(DOMAIN + signed + body)
    return (MAGIC + bytes([kind]) + msg_id + identity.public_key + recipient + stamp
            + bytes([flags]) + signature + body)


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
    recipient = data[pos : pos + NODE_ID_BYTES]
    pos += NODE_ID_BYTES
    stamp = data[pos : pos + TIMESTAMP_BYTES]
    pos += TIMESTAMP_BYTES
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
    head = bytes([kind_byte]) + msg_id + recipient + stamp + bytes([flags_byte])
    if not verify_signature(sender_key, DOMAIN + head + body, signature):
        raise EnvelopeError("bad_signature")
    try:
        payload = unpack_strict(body, max_len=limit, max_array=256, max_map=8)
    except NotMsgpack as exc:
        raise EnvelopeError("malformed", f"payload: {exc}") from None
    return Envelope(kind, msg_id, sender_key, Flags(flags_byte), payload, recipient,
                    int.from_bytes(stamp, "big"))

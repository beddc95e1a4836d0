"""TURN over UDP for the relay benchmark, the wire only (RFC 8489 STUN messages, RFC 8656 /
RFC 5766 TURN methods and attributes, ChannelData): bytes in, typed values out, no sockets.

What the benchmark's TURN client needs and no more: requests with long-term credentials
(MESSAGE-INTEGRITY, HMAC-SHA1 under ``MD5(username:realm:password)``; the password already
SASLprep'd), optional FINGERPRINT, XOR-encoded IPv4 addresses, responses decoded with their
integrity checked over the right bytes, and ChannelData framing. Input is treated as hostile:
every length is checked against what is there before it is used (:class:`TurnWireError`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct(">HHI12s")
ATTR_HEADER = struct.Struct(">HH")
CHANNEL_HEADER = struct.Struct(">HH")
MAX_MESSAGE = 1500  # a STUN message over UDP fits one datagram
FINGERPRINT_XOR = 0x5354554E

# methods
ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND = 0x003, 0x004, 0x008, 0x009
# classes
REQUEST, INDICATION, SUCCESS, ERROR = 0b00, 0b01, 0b10, 0b11
# attributes
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, CHANNEL_NUMBER, LIFETIME = 0x06, 0x08, 0x09, 0x0C, 0x0D
XOR_PEER_ADDRESS, REALM, NONCE, XOR_RELAYED_ADDRESS = 0x12, 0x14, 0x15, 0x16
REQUESTED_TRANSPORT, XOR_MAPPED_ADDRESS, SOFTWARE, FINGERPRINT = 0x19, 0x20, 0x8022, 0x8028
UDP_TRANSPORT = b"\x11\x00\x00\x00"  # REQUESTED-TRANSPORT: protocol 17, 3 bytes RFFU
FIRST_CHANNEL, LAST_CHANNEL = 0x4000, 0x4FFF

Address = tuple[str, int]


class TurnWireError(ValueError):
    """A datagram that is not a well-formed STUN message (or ChannelData) of this shape."""


@dataclass(frozen=True)
class StunMessage:
    method: int
    cls: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]
    #: the message as received, for checking MESSAGE-INTEGRITY over its own bytes
    raw: bytes

    def get(self, attr_type: int) -> bytes | None:
        """The first attribute of this type (later duplicates are ignored, RFC 8489 14)."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None


def message_type(method: int, cls: int) -> int:
    """The 14-bit type field: the method's 12 bits with the class's 2 bits in between."""
    return (((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0x00F)
            | ((cls & 0b10) << 7) | ((cls & 0b01) << 4))


def split_type(value: int) -> tuple[int, int]:
    """(method, class) of a type field."""
    method = ((value & 0x3E00) >> 2) | ((value & 0x00E0) >> 1) | (value & 0x000F)
    cls = ((value & 0x0100) >> 7) | ((value & 0x0010) >> 4)
    return method, cls


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 9.2.2: MD5(username ":" realm ":" password), the password SASLprep'd already."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def _attr(attr_type: int, value: bytes) -> bytes:
    return ATTR_HEADER.pack(attr_type, len(value)) + value + bytes(-len(value) % 4)


def _with_length(message: bytes, length: int) -> bytes:
    return message[:2] + struct.pack(">H", length) + message[4:]


def encode_message(method: int, cls: int, transaction_id: bytes,
                   attributes: list[tuple[int, bytes]], key: bytes | None = None,
                   fingerprint: bool = False) -> bytes:
    """A STUN message; with ``key``, MESSAGE-INTEGRITY after ``attributes``, then FINGERPRINT
    if asked. The HMAC covers the header and everything before it, the length field already
    counting the MESSAGE-INTEGRITY attribute (RFC 8489 14.5); FINGERPRINT likewise (14.7)."""
    if len(transaction_id) != 12:
        raise ValueError("a transaction id is 12 bytes")
    body = b"".join(_attr(t, v) for t, v in attributes)
    msg = HEADER.pack(message_type(method, cls), len(body), MAGIC_COOKIE, transaction_id) + body
    if key is not None:
        msg = _with_length(msg, len(msg) - HEADER.size + 24)
        msg += _attr(MESSAGE_INTEGRITY, hmac.new(key, msg, hashlib.sha1).digest())
    if fingerprint:
        msg = _with_length(msg, len(msg) - HEADER.size + 8)
        msg += _attr(FINGERPRINT, struct.pack(">I", zlib.crc32(msg) ^ FINGERPRINT_XOR))
    return msg


def decode_message(data: bytes) -> StunMessage:
    """A STUN message, its attributes split (not yet authenticated: :func:`integrity_ok`)."""
    if len(data) > MAX_MESSAGE:
        raise TurnWireError(f"{len(data)} bytes: longer than a STUN message over UDP")
    if len(data) < HEADER.size:
        raise TurnWireError("shorter than a STUN header")
    mtype, length, cookie, txid = HEADER.unpack_from(data)
    if mtype & 0xC000 or cookie != MAGIC_COOKIE:
        raise TurnWireError("not a STUN message (type bits or magic cookie)")
    if length % 4 or HEADER.size + length != len(data):
        raise TurnWireError(f"length field {length} does not match {len(data)} bytes")
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER.size
    while pos < len(data):
        if pos + ATTR_HEADER.size > len(data):
            raise TurnWireError("truncated attribute header")
        attr_type, attr_len = ATTR_HEADER.unpack_from(data, pos)
        start = pos + ATTR_HEADER.size
        if start + attr_len > len(data):
            raise TurnWireError(f"attribute 0x{attr_type:04x} runs past the message")
        attrs.append((attr_type, data[start:start + attr_len]))
        pos = start + attr_len + (-attr_len % 4)
    method, cls = split_type(mtype)
    return StunMessage(method, cls, txid, tuple(attrs), bytes(data))


def _attribute_offset(raw: bytes, wanted: int) -> int | None:
    """Where the first ``wanted`` attribute's header starts in a decoded message."""
    pos = HEADER.size
    while pos + ATTR_HEADER.size <= len(raw):
        attr_type, attr_len = ATTR_HEADER.unpack_from(raw, pos)
        if attr_type == wanted:
            return pos
        pos += ATTR_HEADER.size + attr_len + (-attr_len % 4)
    return None


def integrity_ok(msg: StunMessage, key: bytes) -> bool:
    """MESSAGE-INTEGRITY of a received message under ``key``: the HMAC over the bytes before
    the attribute, the header's length rewritten to end just after it (so a FINGERPRINT that
    follows is not covered)."""
    at = _attribute_offset(msg.raw, MESSAGE_INTEGRITY)
    if at is None or at + 24 > len(msg.raw):
        return False
    covered = _with_length(msg.raw[:at], at - HEADER.size + 24)
    expected = hmac.new(key, covered, hashlib.sha1).digest()
    return hmac.compare_digest(expected, msg.raw[at + 4:at + 24])


def fingerprint_ok(msg: StunMessage) -> bool:
    at = _attribute_offset(msg.raw, FINGERPRINT)
    if at is None or at + 8 != len(msg.raw):
        return False  # FINGERPRINT is the last attribute when present
    crc = zlib.crc32(msg.raw[:at]) ^ FINGERPRINT_XOR
    return struct.pack(">I", crc) == msg.raw[at + 4:at + 8]


def encode_xor_address(addr: Address) -> bytes:
    """XOR-MAPPED/-PEER/-RELAYED-ADDRESS value for an IPv4 address (RFC 8489 14.2)."""
    ip = int(ipaddress.IPv4Address(addr[0]))
    return struct.pack(">BBHI", 0, 1, addr[1] ^ (MAGIC_COOKIE >> 16), ip ^ MAGIC_COOKIE)


def decode_xor_address(value: bytes) -> Address:
    if len(value) != 8 or value[1] != 1:
        raise TurnWireError("not an IPv4 XOR address (only IPv4 is used here)")
    _, _, xport, xip = struct.unpack(">BBHI", value)
    return str(ipaddress.IPv4Address(xip ^ MAGIC_COOKIE)), xport ^ (MAGIC_COOKIE >> 16)


def decode_error_code(value: bytes) -> tuple[int, str]:
    """(code, reason) of an ERROR-CODE attribute (RFC 8489 14.8)."""
    if len(value) < 4:
        raise TurnWireError("ERROR-CODE shorter than 4 bytes")
    return (value[2] & 0x7) * 100 + value[3], value[4:].decode("utf-8", "replace")


def encode_channel_number(channel: int) -> bytes:
    if not FIRST_CHANNEL <= channel <= LAST_CHANNEL:
        raise ValueError(f"channel 0x{channel:04x} outside 0x4000-0x4FFF")
    return struct.pack(">HH", channel, 0)


def channel_data(channel: int, payload: bytes) -> bytes:
    """A ChannelData message (RFC 8656 12.4; over UDP the padding is not needed)."""
    return CHANNEL_HEADER.pack(channel, len(payload)) + payload


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    if len(data) < CHANNEL_HEADER.size:
        raise TurnWireError("shorter than a ChannelData header")
    channel, length = CHANNEL_HEADER.unpack_from(data)
    if not FIRST_CHANNEL <= channel <= LAST_CHANNEL:
        raise TurnWireError(f"channel 0x{channel:04x} outside 0x4000-0x4FFF")
    if CHANNEL_HEADER.size + length > len(data):
        raise TurnWireError("ChannelData length runs past the datagram")
    return channel, data[CHANNEL_HEADER.size:CHANNEL_HEADER.size + length]

"""Typed wire messages with strict schemas.

A message body is the canonical msgpack array ``[tag, *fields]`` (``use_bin_type``: bytes
are msgpack bin, text is msgpack str). :func:`decode` accepts only exactly that: a known
tag, the exact number of fields, exact types (``True`` is not an int, ``1`` is not a
float), bounded lengths, checked patterns, no maps or ext types, and the same bytes
:func:`encode` would produce. Anything else raises :class:`MalformedMessage`.

=====  ==============  =====  ====================================================
 tag   message         when   fields
=====  ==============  =====  ====================================================
   1   Probe           plain  nonce: bin16, sent_at: float
   2   ProbeReply      plain  nonce: bin16, sent_at: float, version: u8,
                              accepting: bool, load_permille: 0..1000
   3   ClientHello     plain  version: u8, client_ephemeral_pk: bin32,
                              client_identity_pk: bin32, user: name|"",
                              device: name|"", nonce: bin16, flags: u32
   4   ServerHello     plain  version: u8, server_ephemeral_pk: bin32,
                              server_node_pk: bin32, nonce: bin16, signature: bin64
   5   ClientAuth      plain  signature: bin64
   6   Error           both   code: u16, message: text
  16   Attach          sealed presence_record: bin 1..1024
  17   AttachOk        sealed reflexive_host: ip, reflexive_port: 1..65535,
                              heartbeat_s: 1..3600
  18   Refused         sealed reason_code: u16, message: text,
                              alternatives: [[ip, port, node_key: bin32|bin0]] <= 16
  19   Moving          sealed reason: text, alternatives (as Refused)
  20   Goodbye         sealed reason: text
  21   Ping            sealed seq: u64, sent_at: float
  22   Pong            sealed seq: u64, sent_at: float (both echoed from the Ping)
  32   LookupRequest   sealed request_id: u64, user: name
  33   LookupResponse  sealed request_id: u64, records: [bin 1..1024] <= 32
  48   Signal          sealed request_id: u64, to_user: name, to_device: name|"",
                              payload: bin <= 16384
  49   SignalDelivery  sealed from_user: name, from_device: name, from_key: bin32,
                              payload: bin <= 16384
  50   SignalResult    sealed request_id: u64, ok: bool, reason: text
=====  ==============  =====  ====================================================

``name`` is a user or device name as in :mod:`overlay.core.records` (``[a-z0-9][a-z0-9._-]{0,63}``);
``text`` is printable, at most 256 characters; ``ip`` is a textual IPv4/IPv6 address;
floats are finite. ``ClientHello`` may leave user and device empty only with the
``LOOKUP_ONLY`` flag.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, fields
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Self

import msgpack

from overlay.attach.errors import MalformedMessage, UnknownMessageType
from overlay.attach.frames import MAX_FRAME_BYTES
from overlay.core.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from overlay.core.records import MAX_RECORD_BYTES, NAME_PATTERN
from overlay.core.strict_msgpack import NotMsgpack, unpack_strict

NONCE_BYTES = 16
MAX_TEXT_CHARS = 256
MAX_HOST_CHARS = 64
MAX_ALTERNATIVES = 16
MAX_LOOKUP_RECORDS = 32
MAX_SIGNAL_PAYLOAD_BYTES = 16 * 1024
U8 = 2**8 - 1
U16 = 2**16 - 1
U32 = 2**32 - 1
U64 = 2**64 - 1


class MessageType(IntEnum):
    """Stable wire tags. Never renumber; retire a tag rather than reuse it."""

    PROBE = 1
    PROBE_REPLY = 2
    CLIENT_HELLO = 3
    SERVER_HELLO = 4
    CLIENT_AUTH = 5
    ERROR = 6
    ATTACH = 16
    ATTACH_OK = 17
    REFUSED = 18
    MOVING = 19
    GOODBYE = 20
    PING = 21
    PONG = 22
    DETACH = 23
    LOOKUP_REQUEST = 32
    LOOKUP_RESPONSE = 33
    DIRECTORY_REQUEST = 34
    DIRECTORY_RESPONSE = 35
    REACHABILITY_REQUEST = 36
    REACHABILITY_RESULT = 37
    SIGNAL = 48
    SIGNAL_DELIVERY = 49
    SIGNAL_RESULT = 50


class HelloFlags(IntFlag):
    """``ClientHello.flags``. Unknown bits are refused."""

    NONE = 0
    #: Throwaway identity: lookups only; no Attach, no signalling, no presence.
    LOOKUP_ONLY = 1


KNOWN_HELLO_FLAGS = int(HelloFlags.LOOKUP_ONLY)


class RefuseReason(IntEnum):
    """Well-known ``Refused.reason_code`` values; other codes in 0..65535 are accepted."""

    FULL = 1
    DRAINING = 2
    BAD_RECORD = 3
    NOT_ALLOWED = 4
    RATE_LIMITED = 5


# --- field checks -------------------------------------------------------------------


def _int(name: str, value: Any, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise MalformedMessage(f"{name} must be an int in [{lo}, {hi}], not {value!r:.40}")


def _bool(name: str, value: Any) -> None:
    if type(value) is not bool:
        raise MalformedMessage(f"{name} must be a bool, not {type(value).__name__}")


def _float(name: str, value: Any) -> None:
    if type(value) is not float or not math.isfinite(value):
        raise MalformedMessage(f"{name} must be a finite float, not {value!r:.40}")


def _bytes(name: str, value: Any, lo: int, hi: int) -> None:
    if type(value) is not bytes:
        raise MalformedMessage(f"{name} must be bytes, not {type(value).__name__}")
    if not lo <= len(value) <= hi:
        size = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise MalformedMessage(f"{name} must be {size} bytes, not {len(value)}")


def _key(name: str, value: Any) -> None:
    _bytes(name, value, PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES)


def _text(name: str, value: Any, max_chars: int = MAX_TEXT_CHARS) -> None:
    if type(value) is not str:
        raise MalformedMessage(f"{name} must be a str, not {type(value).__name__}")
    if len(value) > max_chars or not value.isprintable():
        raise MalformedMessage(f"{name} must be printable text of at most {max_chars} chars")


def _name(name: str, value: Any, allow_empty: bool = False) -> None:
    if type(value) is not str:
        raise MalformedMessage(f"{name} must be a str, not {type(value).__name__}")
    if allow_empty and value == "":
        return
    if not NAME_PATTERN.match(value):
        raise MalformedMessage(
            f"{name} {value!r:.70} must be 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )


def _host(name: str, value: Any) -> None:
    _text(name, value, MAX_HOST_CHARS)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise MalformedMessage(f"{name} {value!r} is not an IP address") from None


def _port(name: str, value: Any) -> None:
    _int(name, value, 1, 65535)


def _tuple_of(name: str, value: Any, max_items: int) -> tuple[Any, ...]:
    if type(value) is list:
        value = tuple(value)
    if type(value) is not tuple or len(value) > max_items:
        raise MalformedMessage(f"{name} must be a list of at most {max_items} items")
    return value


# --- messages -----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Base of every wire message. Constructing an invalid message raises MalformedMessage."""

    TAG: ClassVar[MessageType]

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        raise NotImplementedError

    def _to_wire(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def _from_wire(cls, values: list[Any]) -> Self:
        return cls(*values)

    @classmethod
    def arity(cls) -> int:
        return len(fields(cls))


@dataclass(frozen=True)
class Alternative:
    """Another supernode to try: address and, when known, its node key (else ``b""``)."""

    host: str
    port: int
    node_key: bytes = b""

    def __post_init__(self) -> None:
        _host("alternative host", self.host)
        _port("alternative port", self.port)
        _bytes("alternative node_key", self.node_key, 0, PUBLIC_KEY_BYTES)
        if self.node_key and len(self.node_key) != PUBLIC_KEY_BYTES:
            raise MalformedMessage("alternative node_key must be 32 bytes or empty")

    def to_wire(self) -> list[Any]:
        return [self.host, self.port, self.node_key]

    @classmethod
    def from_wire(cls, value: Any) -> Alternative:
        if type(value) is not list or len(value) != 3:
            raise MalformedMessage("an alternative is [host, port, node_key]")
        return cls(*value)


def _alternatives(value: Any) -> tuple[Alternative, ...]:
    items = _tuple_of("alternatives", value, MAX_ALTERNATIVES)
    if not all(type(a) is Alternative for a in items):
        raise MalformedMessage("alternatives must be Alternative values")
    return items


@dataclass(frozen=True)
class Probe(Message):
    """Unencrypted RTT probe, allowed before ``ClientHello``; ``sent_at`` is echoed."""

    nonce: bytes
    sent_at: float
    TAG = MessageType.PROBE

    def _check(self) -> None:
        _bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)
        _float("sent_at", self.sent_at)


@dataclass(frozen=True)
class ProbeReply(Message):
    """Unauthenticated answer to a Probe: a hint for supernode selection, nothing more."""

    nonce: bytes
    sent_at: float
    version: int
    accepting: bool
    load_permille: int
    TAG = MessageType.PROBE_REPLY

    def _check(self) -> None:
        _bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)
        _float("sent_at", self.sent_at)
        _int("version", self.version, 0, U8)
        _bool("accepting", self.accepting)
        _int("load_permille", self.load_permille, 0, 1000)


@dataclass(frozen=True)
class ClientHello(Message):
    version: int
    client_ephemeral_pk: bytes
    client_identity_pk: bytes
    user: str
    device: str
    nonce: bytes
    flags: int
    TAG = MessageType.CLIENT_HELLO

    def _check(self) -> None:
        _int("version", self.version, 0, U8)
        _key("client_ephemeral_pk", self.client_ephemeral_pk)
        _key("client_identity_pk", self.client_identity_pk)
        _int("flags", self.flags, 0, U32)
        if self.flags & ~KNOWN_HELLO_FLAGS:
            raise MalformedMessage(f"unknown hello flags {self.flags & ~KNOWN_HELLO_FLAGS:#x}")
        lookup_only = bool(self.flags & HelloFlags.LOOKUP_ONLY)
        _name("user", self.user, allow_empty=lookup_only)
        _name("device", self.device, allow_empty=lookup_only)
        _bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)

    @property
    def lookup_only(self) -> bool:
        return bool(self.flags & HelloFlags.LOOKUP_ONLY)


@dataclass(frozen=True)
class ServerHello(Message):
    version: int
    server_ephemeral_pk: bytes
    server_node_pk: bytes
    nonce: bytes
    signature: bytes
    TAG = MessageType.SERVER_HELLO

    def _check(self) -> None:
        _int("version", self.version, 0, U8)
        _key("server_ephemeral_pk", self.server_ephemeral_pk)
        _key("server_node_pk", self.server_node_pk)
        _bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)
        _bytes("signature", self.signature, SIGNATURE_BYTES, SIGNATURE_BYTES)


@dataclass(frozen=True)
class ClientAuth(Message):
    signature: bytes
    TAG = MessageType.CLIENT_AUTH

    def _check(self) -> None:
        _bytes("signature", self.signature, SIGNATURE_BYTES, SIGNATURE_BYTES)


@dataclass(frozen=True)
class Error(Message):
    """Fatal: the sender closes the connection after it. Plaintext only before the handshake."""

    code: int
    message: str
    TAG = MessageType.ERROR

    def _check(self) -> None:
        _int("code", self.code, 0, U16)
        _text("message", self.message)


@dataclass(frozen=True)
class Attach(Message):
    """Client asks to be attached and to have its signed presence record published."""

    presence_record: bytes
    TAG = MessageType.ATTACH

    def _check(self) -> None:
        _bytes("presence_record", self.presence_record, 1, MAX_RECORD_BYTES)


@dataclass(frozen=True)
class AttachOk(Message):
    """Attached. ``reflexive_*`` is the client's address as the supernode sees it."""

    reflexive_host: str
    reflexive_port: int
    heartbeat_s: int
    TAG = MessageType.ATTACH_OK

    def _check(self) -> None:
        _host("reflexive_host", self.reflexive_host)
        _port("reflexive_port", self.reflexive_port)
        _int("heartbeat_s", self.heartbeat_s, 1, 3600)


@dataclass(frozen=True)
class Refused(Message):
    """Admission control: not attached here (e.g. full); try the alternatives."""

    reason_code: int
    message: str
    alternatives: tuple[Alternative, ...] = ()
    TAG = MessageType.REFUSED

    def _check(self) -> None:
        _int("reason_code", self.reason_code, 0, U16)
        _text("message", self.message)
        object.__setattr__(self, "alternatives", _alternatives(self.alternatives))

    def _to_wire(self) -> list[Any]:
        return [self.reason_code, self.message, [a.to_wire() for a in self.alternatives]]

    @classmethod
    def _from_wire(cls, values: list[Any]) -> Self:
        code, message, alts = values
        items = _tuple_of("alternatives", alts, MAX_ALTERNATIVES)
        return cls(code, message, tuple(Alternative.from_wire(a) for a in items))


@dataclass(frozen=True)
class Moving(Message):
    """The supernode is shutting down or shedding load: re-attach elsewhere."""

    reason: str
    alternatives: tuple[Alternative, ...] = ()
    TAG = MessageType.MOVING

    def _check(self) -> None:
        _text("reason", self.reason)
        object.__setattr__(self, "alternatives", _alternatives(self.alternatives))

    def _to_wire(self) -> list[Any]:
        return [self.reason, [a.to_wire() for a in self.alternatives]]

    @classmethod
    def _from_wire(cls, values: list[Any]) -> Self:
        reason, alts = values
        items = _tuple_of("alternatives", alts, MAX_ALTERNATIVES)
        return cls(reason, tuple(Alternative.from_wire(a) for a in items))


@dataclass(frozen=True)
class Goodbye(Message):
    """Orderly close; the sender sends nothing after it."""

    reason: str = ""
    TAG = MessageType.GOODBYE

    def _check(self) -> None:
        _text("reason", self.reason)


@dataclass(frozen=True)
class Ping(Message):
    seq: int
    sent_at: float
    TAG = MessageType.PING

    def _check(self) -> None:
        _int("seq", self.seq, 0, U64)
        _float("sent_at", self.sent_at)


@dataclass(frozen=True)
class Pong(Message):
    seq: int
    sent_at: float
    TAG = MessageType.PONG

    def _check(self) -> None:
        _int("seq", self.seq, 0, U64)
        _float("sent_at", self.sent_at)


@dataclass(frozen=True)
class LookupRequest(Message):
    request_id: int
    user: str
    TAG = MessageType.LOOKUP_REQUEST

    def _check(self) -> None:
        _int("request_id", self.request_id, 0, U64)
        _name("user", self.user)


@dataclass(frozen=True)
class LookupResponse(Message):
    """Signed presence records, opaque here; verify each with ``overlay.core.records.verify``."""

    request_id: int
    records: tuple[bytes, ...]
    TAG = MessageType.LOOKUP_RESPONSE

    def _check(self) -> None:
        _int("request_id", self.request_id, 0, U64)
        records = _tuple_of("records", self.records, MAX_LOOKUP_RECORDS)
        for record in records:
            _bytes("record", record, 1, MAX_RECORD_BYTES)
        object.__setattr__(self, "records", records)

    def _to_wire(self) -> list[Any]:
        return [self.request_id, list(self.records)]

    @classmethod
    def _from_wire(cls, values: list[Any]) -> Self:
        request_id, records = values
        if type(records) is not list:
            raise MalformedMessage("records must be a list")
        return cls(request_id, tuple(records))


@dataclass(frozen=True)
class DirectoryRequest(Message):
    """Ask for signed supernode records (the supernode directory in the DHT)."""

    request_id: int
    TAG = MessageType.DIRECTORY_REQUEST

    def _check(self) -> None:
        _int("request_id", self.request_id, 0, U64)


@dataclass(frozen=True)
class DirectoryResponse(LookupResponse):
    """Signed supernode records, opaque here; verify each with ``overlay.core.records.verify``."""

    TAG = MessageType.DIRECTORY_RESPONSE


@dataclass(frozen=True)
class ReachabilityRequest(Message):
    """Ask the supernode to dial back to this session's source IP on ``port`` (TCP and UDP)."""

    request_id: int
    port: int
    TAG = MessageType.REACHABILITY_REQUEST

    def _check(self) -> None:
        _int("request_id", self.request_id, 0, U64)
        _port("port", self.port)


@dataclass(frozen=True)
class ReachabilityResult(Message):
    request_id: int
    host: str
    tcp_ok: bool
    udp_ok: bool
    TAG = MessageType.REACHABILITY_RESULT

    def _check(self) -> None:
        _int("request_id", self.request_id, 0, U64)
        _host("host", self.host)
        _bool("tcp_ok", self.tcp_ok)
        _bool("udp_ok", self.udp_ok)


@dataclass(frozen=True)
class Detach(Message):
    """Clean exit: a signed *offline* presence record to publish; the session then ends."""

    presence_record: bytes
    TAG = MessageType.DETACH

    def _check(self) -> None:
        _bytes("presence_record", self.presence_record, 1, MAX_RECORD_BYTES)


@dataclass(frozen=True)
class Signal(Message):
    """Opaque payload for ``to_user`` (one device, or every device when ``to_device`` is "")."""

    request_id: int
    to_user: str
    to_device: str
    payload: bytes
    TAG = MessageType.SIGNAL

    def _check(self) -> None:
        _int("request_id", self.request_id, 0, U64)
        _name("to_user", self.to_user)
        _name("to_device", self.to_device, allow_empty=True)
        _bytes("payload", self.payload, 0, MAX_SIGNAL_PAYLOAD_BYTES)


@dataclass(frozen=True)
class SignalDelivery(Message):
    """A forwarded Signal. ``from_key`` is the sender's identity key as its supernode saw it."""

    from_user: str
    from_device: str
    from_key: bytes
    payload: bytes
    TAG = MessageType.SIGNAL_DELIVERY

    def _check(self) -> None:
        _name("from_user", self.from_user)
        _name("from_device", self.from_device)
        _key("from_key", self.from_key)
        _bytes("payload", self.payload, 0, MAX_SIGNAL_PAYLOAD_BYTES)


@dataclass(frozen=True)
class SignalResult(Message):
    request_id: int
    ok: bool
    reason: str = ""
    TAG = MessageType.SIGNAL_RESULT

    def _check(self) -> None:
        _int("request_id", self.request_id, 0, U64)
        _bool("ok", self.ok)
        _text("reason", self.reason)


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (
        Probe, ProbeReply, ClientHello, ServerHello, ClientAuth, Error, Attach, AttachOk,
        Refused, Moving, Goodbye, Ping, Pong, LookupRequest, LookupResponse, Signal,
        SignalDelivery, SignalResult, DirectoryRequest, DirectoryResponse, Detach,
        ReachabilityRequest, ReachabilityResult,
    )
}
assert len(MESSAGE_TYPES) == len(MessageType)

#: Messages that travel unencrypted, before the handshake completes.
PLAINTEXT_TYPES: frozenset[type[Message]] = frozenset(
    {Probe, ProbeReply, ClientHello, ServerHello, ClientAuth, Error}
)
#: Messages that travel inside the secure channel.
SEALED_TYPES: frozenset[type[Message]] = frozenset(
    {cls for cls in MESSAGE_TYPES.values() if cls not in PLAINTEXT_TYPES} | {Error}
)
#: Sealed messages each side may send.
CLIENT_SENDS: frozenset[type[Message]] = frozenset(
    {Attach, Detach, Ping, Pong, LookupRequest, DirectoryRequest, Signal, ReachabilityRequest,
     Goodbye, Error}
)
SERVER_SENDS: frozenset[type[Message]] = frozenset(
    {AttachOk, Refused, Moving, Goodbye, Ping, Pong, LookupResponse, DirectoryResponse,
     SignalDelivery, SignalResult, ReachabilityResult, Error}
)
#: What a LOOKUP_ONLY client may send.
LOOKUP_ONLY_SENDS: frozenset[type[Message]] = frozenset(
    {Ping, Pong, LookupRequest, DirectoryRequest, Goodbye, Error}
)


def encode(msg: Message) -> bytes:
    """The canonical body of ``msg``."""
    if not isinstance(msg, Message) or type(msg) not in MESSAGE_TYPES.values():
        raise TypeError(f"not a wire message: {type(msg).__name__}")
    body: bytes = msgpack.packb([int(msg.TAG), *msg._to_wire()], use_bin_type=True)
    return body


def decode(body: bytes) -> Message:
    """Parse a body; raise :class:`MalformedMessage` unless it is exactly a valid message."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise MalformedMessage(f"a message body is bytes, not {type(body).__name__}")
    body = bytes(body)
    if len(body) > MAX_FRAME_BYTES:
        raise MalformedMessage(f"message body of {len(body)} bytes is too large")
    try:
        values = unpack_strict(body, max_len=MAX_FRAME_BYTES)
    except NotMsgpack as exc:
        raise MalformedMessage(f"not a msgpack message: {exc}") from None
    if type(values) is not list or not values:
        raise MalformedMessage(f"a message is a non-empty array, not {type(values).__name__}")
    tag = values[0]
    if type(tag) is not int:
        raise MalformedMessage(f"message tag must be an int, not {type(tag).__name__}")
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise UnknownMessageType(f"unknown message tag {tag}")
    if len(values) - 1 != cls.arity():
        raise MalformedMessage(
            f"{cls.__name__} has {cls.arity()} fields, got {len(values) - 1}"
        )
    msg = cls._from_wire(values[1:])
    if encode(msg) != body:
        raise MalformedMessage(f"{cls.__name__} is not canonically encoded")
    return msg

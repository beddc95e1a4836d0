"""The sealed messages of an established session: attach and detach, admission
(``Refused``, ``Moving``), liveness (``Ping``/``Pong``, ``Goodbye``), lookups, the directory,
reachability checks, signalling and relay reservations. Tags 16-53 in
:mod:`overlay.attach.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Self

from overlay.attach.errors import MalformedMessage
from overlay.attach.schema import (
    MAX_ALTERNATIVES,
    MAX_LOOKUP_RECORDS,
    MAX_SIGNAL_PAYLOAD_BYTES,
    U16,
    U64,
    Message,
    MessageType,
    check_bool,
    check_bytes,
    check_float,
    check_host,
    check_int,
    check_key,
    check_name,
    check_port,
    check_text,
    tuple_of,
)
from overlay.core.identity import PUBLIC_KEY_BYTES
from overlay.core.records import MAX_RECORD_BYTES


class RefuseReason(IntEnum):
    """Well-known ``Refused.reason_code`` values; other codes in 0..65535 are accepted."""

    FULL = 1
    DRAINING = 2
    BAD_RECORD = 3
    NOT_ALLOWED = 4
    RATE_LIMITED = 5


@dataclass(frozen=True)
class Alternative:
    """Another supernode to try: address and, when known, its node key (else ``b""``)."""

    host: str
    port: int
    node_key: bytes = b""

    def __post_init__(self) -> None:
        check_host("alternative host", self.host)
        check_port("alternative port", self.port)
        check_bytes("alternative node_key", self.node_key, 0, PUBLIC_KEY_BYTES)
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
    items = tuple_of("alternatives", value, MAX_ALTERNATIVES)
    if not all(type(a) is Alternative for a in items):
        raise MalformedMessage("alternatives must be Alternative values")
    return items


@dataclass(frozen=True)
class Attach(Message):
    """Client asks to be attached and to have its signed presence record published, and its
    signed name claim (``b""``: none) published too; the claim outlives the session."""

    presence_record: bytes
    name_claim: bytes = b""
    TAG = MessageType.ATTACH

    def _check(self) -> None:
        check_bytes("presence_record", self.presence_record, 1, MAX_RECORD_BYTES)
        check_bytes("name_claim", self.name_claim, 0, MAX_RECORD_BYTES)


@dataclass(frozen=True)
class AttachOk(Message):
    """Attached. ``reflexive_*`` is the client's address as the supernode sees it."""

    reflexive_host: str
    reflexive_port: int
    heartbeat_s: int
    TAG = MessageType.ATTACH_OK

    def _check(self) -> None:
        check_host("reflexive_host", self.reflexive_host)
        check_port("reflexive_port", self.reflexive_port)
        check_int("heartbeat_s", self.heartbeat_s, 1, 3600)


@dataclass(frozen=True)
class Refused(Message):
    """Admission control: not attached here (e.g. full); try the alternatives."""

    reason_code: int
    message: str
    alternatives: tuple[Alternative, ...] = ()
    TAG = MessageType.REFUSED

    def _check(self) -> None:
        check_int("reason_code", self.reason_code, 0, U16)
        check_text("message", self.message)
        object.__setattr__(self, "alternatives", _alternatives(self.alternatives))

    def _to_wire(self) -> list[Any]:
        return [self.reason_code, self.message, [a.to_wire() for a in self.alternatives]]

    @classmethod
    def _from_wire(cls, values: list[Any]) -> Self:
        code, message, alts = values
        items = tuple_of("alternatives", alts, MAX_ALTERNATIVES)
        return cls(code, message, tuple(Alternative.from_wire(a) for a in items))


@dataclass(frozen=True)
class Moving(Message):
    """The supernode is shutting down or shedding load: re-attach elsewhere."""

    reason: str
    alternatives: tuple[Alternative, ...] = ()
    TAG = MessageType.MOVING

    def _check(self) -> None:
        check_text("reason", self.reason)
        object.__setattr__(self, "alternatives", _alternatives(self.alternatives))

    def _to_wire(self) -> list[Any]:
        return [self.reason, [a.to_wire() for a in self.alternatives]]

    @classmethod
    def _from_wire(cls, values: list[Any]) -> Self:
        reason, alts = values
        items = tuple_of("alternatives", alts, MAX_ALTERNATIVES)
        return cls(reason, tuple(Alternative.from_wire(a) for a in items))


@dataclass(frozen=True)
class Goodbye(Message):
    """Orderly close; the sender sends nothing after it."""

    reason: str = ""
    TAG = MessageType.GOODBYE

    def _check(self) -> None:
        check_text("reason", self.reason)


@dataclass(frozen=True)
class Ping(Message):
    seq: int
    sent_at: float
    TAG = MessageType.PING

    def _check(self) -> None:
        check_int("seq", self.seq, 0, U64)
        check_float("sent_at", self.sent_at)


@dataclass(frozen=True)
class Pong(Message):
    seq: int
    sent_at: float
    TAG = MessageType.PONG

    def _check(self) -> None:
        check_int("seq", self.seq, 0, U64)
        check_float("sent_at", self.sent_at)


@dataclass(frozen=True)
class LookupRequest(Message):
    request_id: int
    user: str
    TAG = MessageType.LOOKUP_REQUEST

    def _check(self) -> None:
        check_int("request_id", self.request_id, 0, U64)
        check_name("user", self.user)


@dataclass(frozen=True)
class LookupResponse(Message):
    """Signed presence records, opaque here; verify each with ``overlay.core.records.verify``."""

    request_id: int
    records: tuple[bytes, ...]
    TAG = MessageType.LOOKUP_RESPONSE

    def _check(self) -> None:
        check_int("request_id", self.request_id, 0, U64)
        records = tuple_of("records", self.records, MAX_LOOKUP_RECORDS)
        for record in records:
            check_bytes("record", record, 1, MAX_RECORD_BYTES)
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
        check_int("request_id", self.request_id, 0, U64)


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
        check_int("request_id", self.request_id, 0, U64)
        check_port("port", self.port)


@dataclass(frozen=True)
class ReachabilityResult(Message):
    request_id: int
    host: str
    tcp_ok: bool
    udp_ok: bool
    TAG = MessageType.REACHABILITY_RESULT

    def _check(self) -> None:
        check_int("request_id", self.request_id, 0, U64)
        check_host("host", self.host)
        check_bool("tcp_ok", self.tcp_ok)
        check_bool("udp_ok", self.udp_ok)


@dataclass(frozen=True)
class Detach(Message):
    """Clean exit: a signed *offline* presence record to publish; the session then ends."""

    presence_record: bytes
    TAG = MessageType.DETACH

    def _check(self) -> None:
        check_bytes("presence_record", self.presence_record, 1, MAX_RECORD_BYTES)


@dataclass(frozen=True)
class Signal(Message):
    """Opaque payload for ``to_user`` (one device, or every device when ``to_device`` is "")."""

    request_id: int
    to_user: str
    to_device: str
    payload: bytes
    TAG = MessageType.SIGNAL

    def _check(self) -> None:
        check_int("request_id", self.request_id, 0, U64)
        check_name("to_user", self.to_user)
        check_name("to_device", self.to_device, allow_empty=True)
        check_bytes("payload", self.payload, 0, MAX_SIGNAL_PAYLOAD_BYTES)


@dataclass(frozen=True)
class SignalDelivery(Message):
    """A forwarded Signal. ``from_key`` is the sender's identity key as its supernode saw it."""

    from_user: str
    from_device: str
    from_key: bytes
    payload: bytes
    TAG = MessageType.SIGNAL_DELIVERY

    def _check(self) -> None:
        check_name("from_user", self.from_user)
        check_name("from_device", self.from_device)
        check_key("from_key", self.from_key)
        check_bytes("payload", self.payload, 0, MAX_SIGNAL_PAYLOAD_BYTES)


@dataclass(frozen=True)
class SignalResult(Message):
    request_id: int
    ok: bool
    reason: str = ""
    TAG = MessageType.SIGNAL_RESULT

    def _check(self) -> None:
        check_int("request_id", self.request_id, 0, U64)
        check_bool("ok", self.ok)
        check_text("reason", self.reason)


#: a relay token's hash (:func:`overlay.relay.voucher.token_hash`)
TOKEN_HASH_BYTES = 32


@dataclass(frozen=True)
class RelayReserve(Message):
    """An attached client reserves one relay session on this supernode: the caller's hello
    with the token whose hash is ``token_hash`` is then admitted without a voucher."""

    request_id: int
    token_hash: bytes
    TAG = MessageType.RELAY_RESERVE

    def _check(self) -> None:
        check_int("request_id", self.request_id, 0, U64)
        check_bytes("token_hash", self.token_hash, TOKEN_HASH_BYTES, TOKEN_HASH_BYTES)


@dataclass(frozen=True)
class RelayReserved(Message):
    """The answer: ``ok`` and, when not, the relay's refusal reason; ``ttl_s``, how long the
    reservation waits for its caller."""

    request_id: int
    ok: bool
    reason: str
    ttl_s: float
    TAG = MessageType.RELAY_RESERVED

    def _check(self) -> None:
        check_int("request_id", self.request_id, 0, U64)
        check_bool("ok", self.ok)
        check_text("reason", self.reason)
        check_float("ttl_s", self.ttl_s)
        if not 0.0 <= self.ttl_s <= 3600.0:
            raise MalformedMessage("ttl_s must be in [0, 3600]")

"""Signed records: the only values the overlay's DHT stores.

Wire form: ``msgpack([body, signature])`` where ``body`` is the canonical msgpack array
``[FORMAT_VERSION, kind, *fields]`` and the signature is ed25519 over
``SIGNING_DOMAIN + body``. Every record from anywhere goes through :func:`verify`, which
checks size, schema, canonical encoding, signature, lifetime and clock skew, and raises a
:class:`RecordError` subclass naming what is wrong.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from overlay.core.directory_keys import directory_key
from overlay.core.errors import OverlayError
from overlay.core.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from overlay.core.strict_msgpack import NotMsgpack, unpack_strict

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"overlay/record/v1\x00"
#: A record, with its signature, always fits one unfragmented UDP datagram.
MAX_RECORD_BYTES = 1024
#: No presence or supernode record may claim to live longer than this.
MAX_LIFETIME_S = 24 * 3600.0
#: A name claim lives 31 days: the network keeps a name for at least 30 days after its
#: owner's last signed refresh (one a day while a client runs)...
NAME_CLAIM_LIFETIME_S = 31 * 24 * 3600.0
#: ... and may claim at most 32 (a day of slack for clocks and refresh timing).
MAX_CLAIM_LIFETIME_S = 32 * 24 * 3600.0
#: How far a signer's clock may be from ours.
CLOCK_SKEW_S = 60.0
MAX_SEQ = 2**63 - 1

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
CAPABILITY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}\Z")
MAX_CAPABILITIES = 16


class RecordError(OverlayError):
    """A record was refused. ``reason`` is a short stable label for metrics and logs."""

    reason: ClassVar[str] = "invalid"


class MalformedRecord(RecordError):
    reason = "malformed"


class OversizedRecord(RecordError):
    reason = "oversized"


class BadSignature(RecordError):
    reason = "bad_signature"


class ExpiredRecord(RecordError):
    reason = "expired"


class FutureRecord(RecordError):
    reason = "from_future"


class LifetimeTooLong(RecordError):
    reason = "lifetime_too_long"


class WrongKey(RecordError):
    """The record is not for the DHT key it was offered under."""

    reason = "wrong_key"


class StaleSequence(RecordError):
    reason = "stale_sequence"


class NameClaimed(RecordError):
    """The name's live records are signed by another key."""

    reason = "name_claimed"


class StorageFull(RecordError):
    reason = "storage_full"


class RecordKind(IntEnum):
    PRESENCE = 1
    SUPERNODE = 2
    NAME_CLAIM = 3


def user_key(name: str) -> bytes:
    """The DHT key under which a user's presence records and name claims are stored."""
    return hashlib.sha256(b"overlay/user/" + name.encode()).digest()[:20]


def check_name(name: str, what: str = "user name") -> str:
    if not NAME_PATTERN.match(name):
        raise MalformedRecord(
            f"{what} {name!r} must be 1-64 of a-z 0-9 . _ - and start with a letter or digit"
        )
    return name


def _check_ip(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise MalformedRecord(f"address {host!r} is not an IP address") from None
    return host


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise MalformedRecord(f"port {port} is out of range")
    return port


@dataclass(frozen=True)
class PresenceRecord:
    """"User U's device D is (or is no longer) reachable through supernode S." Signed by U."""

    user: str
    user_key: bytes
    device: str
    online: bool
    supernode_key: bytes
    supernode_host: str
    supernode_port: int
    capabilities: tuple[str, ...]
    seq: int
    issued_at: float
    expires_at: float

    kind: ClassVar[RecordKind] = RecordKind.PRESENCE
    max_lifetime_s: ClassVar[float] = MAX_LIFETIME_S
    _types: ClassVar[tuple[type, ...]] = (
        str, bytes, str, bool, bytes, str, int, list, int, float, float,
    )

    def fields(self) -> list[Any]:
        return [
            self.user, self.user_key, self.device, self.online, self.supernode_key,
            self.supernode_host, self.supernode_port, list(self.capabilities), self.seq,
            self.issued_at, self.expires_at,
        ]

    @classmethod
    def from_fields(cls, values: list[Any]) -> PresenceRecord:
        caps = values[7]
        if len(caps) > MAX_CAPABILITIES or not all(
            type(c) is str and CAPABILITY_PATTERN.match(c) for c in caps
        ):
            raise MalformedRecord("capabilities must be up to 16 short lowercase labels")
        v = values
        return cls(
            user=v[0], user_key=v[1], device=v[2], online=v[3], supernode_key=v[4],
            supernode_host=v[5], supernode_port=v[6], capabilities=tuple(caps), seq=v[8],
            issued_at=v[9], expires_at=v[10],
        )

    def check(self) -> None:
        check_name(self.user)
        check_name(self.device, "device id")
        if len(self.user_key) != PUBLIC_KEY_BYTES:
            raise MalformedRecord("user key must be 32 bytes")
        if self.online:
            if len(self.supernode_key) != PUBLIC_KEY_BYTES:
                raise MalformedRecord("an online record must name its supernode's key")
            _check_ip(self.supernode_host)
            _check_port(self.supernode_port)
        elif self.supernode_key or self.supernode_host or self.supernode_port:
            raise MalformedRecord("an offline record names no supernode")

    @property
    def signer(self) -> bytes:
        return self.user_key

    @property
    def dht_key(self) -> bytes:
        return user_key(self.user)

    @property
    def slot(self) -> tuple[bytes, str]:
        """Records in one slot replace each other by sequence number."""
        return (self.user_key, self.device)

    @property
    def claimed_name(self) -> str | None:
        return self.user


@dataclass(frozen=True)
class SupernodeRecord:
    """A supernode's public address, load and relay capacity. Signed by the node key.

    ``relay_udp_port``: the UDP port of its datagram relay for calls
    (:mod:`overlay.relay.datagram`) on ``host``; 0: none. It is a 12th field present only
    when not 0, so a record without it is the 11 fields it always was."""

    node_key: bytes
    host: str
    port: int
    relay_capacity_bps: int
    relay_spare_bps: int
    load: int
    max_clients: int
    coords: tuple[float, ...]
    seq: int
    issued_at: float
    expires_at: float
    relay_udp_port: int = 0

    kind: ClassVar[RecordKind] = RecordKind.SUPERNODE
    max_lifetime_s: ClassVar[float] = MAX_LIFETIME_S
    _types: ClassVar[tuple[type, ...]] = (
        bytes, str, int, int, int, int, int, list, int, float, float,
    )
    #: trailing fields a record may leave out (each only with those after it)
    _optional_types: ClassVar[tuple[type, ...]] = (int,)

    def fields(self) -> list[Any]:
        return [
            self.node_key, self.host, self.port, self.relay_capacity_bps,
            self.relay_spare_bps, self.load, self.max_clients, list(self.coords), self.seq,
            self.issued_at, self.expires_at,
            *([self.relay_udp_port] if self.relay_udp_port else []),
        ]

    @classmethod
    def from_fields(cls, values: list[Any]) -> SupernodeRecord:
        coords = values[7]
        if len(coords) > 4 or not all(type(c) is float and math.isfinite(c) for c in coords):
            raise MalformedRecord("coords must be up to 4 finite floats")
        v = values
        if len(v) > 11 and v[11] == 0:
            raise MalformedRecord("a supernode without a UDP relay leaves the port out")
        return cls(
            node_key=v[0], host=v[1], port=v[2], relay_capacity_bps=v[3], relay_spare_bps=v[4],
            load=v[5], max_clients=v[6], coords=tuple(coords), seq=v[8], issued_at=v[9],
            expires_at=v[10], relay_udp_port=v[11] if len(v) > 11 else 0,
        )

    def check(self) -> None:
        if len(self.node_key) != PUBLIC_KEY_BYTES:
            raise MalformedRecord("node key must be 32 bytes")
        _check_ip(self.host)
        _check_port(self.port)
        for name in ("relay_capacity_bps", "relay_spare_bps", "load", "max_clients"):
            if getattr(self, name) < 0:
                raise MalformedRecord(f"{name} must not be negative")
        if self.relay_spare_bps > self.relay_capacity_bps:
            raise MalformedRecord("relay spare capacity exceeds capacity")
        if self.relay_udp_port:
            _check_port(self.relay_udp_port)

    @property
    def signer(self) -> bytes:
        return self.node_key

    @property
    def dht_key(self) -> bytes:
        return directory_key(self.host)

    @property
    def slot(self) -> tuple[bytes, str]:
        return (self.node_key, "")

    @property
    def claimed_name(self) -> str | None:
        return None


@dataclass(frozen=True)
class NameClaim:
    """"The name U belongs to this key." Signed by U; outlives presence (31 days), so the
    holders of the name keep refusing other keys while its owner is offline."""

    user: str
    user_key: bytes
    seq: int
    issued_at: float
    expires_at: float

    kind: ClassVar[RecordKind] = RecordKind.NAME_CLAIM
    max_lifetime_s: ClassVar[float] = MAX_CLAIM_LIFETIME_S
    _types: ClassVar[tuple[type, ...]] = (str, bytes, int, float, float)

    def fields(self) -> list[Any]:
        return [self.user, self.user_key, self.seq, self.issued_at, self.expires_at]

    @classmethod
    def from_fields(cls, values: list[Any]) -> NameClaim:
        v = values
        return cls(user=v[0], user_key=v[1], seq=v[2], issued_at=v[3], expires_at=v[4])

    def check(self) -> None:
        check_name(self.user)
        if len(self.user_key) != PUBLIC_KEY_BYTES:
            raise MalformedRecord("user key must be 32 bytes")

    @property
    def signer(self) -> bytes:
        return self.user_key

    @property
    def dht_key(self) -> bytes:
        return user_key(self.user)

    @property
    def slot(self) -> tuple[bytes, str]:
        """One claim per key ("" is no device name: device names are never empty)."""
        return (self.user_key, "")

    @property
    def claimed_name(self) -> str | None:
        return self.user


Record = PresenceRecord | SupernodeRecord | NameClaim
_RECORD_CLASSES: dict[int, type[PresenceRecord] | type[SupernodeRecord] | type[NameClaim]] = {
    RecordKind.PRESENCE: PresenceRecord,
    RecordKind.SUPERNODE: SupernodeRecord,
    RecordKind.NAME_CLAIM: NameClaim,
}


@dataclass(frozen=True)
class SignedRecord:
    """A verified record together with the exact bytes that were signed."""

    record: Record
    wire: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def dht_key(self) -> bytes:
        return self.record.dht_key

    @property
    def slot(self) -> tuple[bytes, str]:
        return self.record.slot

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def expires_at(self) -> float:
        return self.record.expires_at


def check_lifetime(record: Record, now: float) -> None:
    """Sequence range, lifetime bounds, clock skew and expiry of a record at time ``now``."""
    if record.seq < 0 or record.seq > MAX_SEQ:
        raise MalformedRecord("sequence number out of range")
    if not (math.isfinite(record.issued_at) and math.isfinite(record.expires_at)):
        raise MalformedRecord("record times must be finite")  # NaN passes every comparison
    if record.expires_at <= record.issued_at:
        raise MalformedRecord("record expires before it is issued")
    if record.expires_at - record.issued_at > record.max_lifetime_s:
        raise LifetimeTooLong(
            f"lifetime {record.expires_at - record.issued_at:.0f}s exceeds "
            f"{record.max_lifetime_s:.0f}s"
        )
    if record.issued_at > now + CLOCK_SKEW_S:
        raise FutureRecord(
            f"issued {record.issued_at - now:.0f}s in the future (allowed {CLOCK_SKEW_S:.0f}s)"
        )
    if record.expires_at <= now - CLOCK_SKEW_S:
        raise ExpiredRecord(f"expired {now - record.expires_at:.0f}s ago")


def sign(record: Record, identity: Identity, now: float | None = None) -> SignedRecord:
    """Sign ``record`` with ``identity``, which must be the record's signer."""
    if identity.public_key != record.signer:
        raise BadSignature("this identity is not the record's signer")
    record.check()
    check_lifetime(record, time.time() if now is None else now)
    body = msgpack.packb([FORMAT_VERSION, int(record.kind), *record.fields()], use_bin_type=True)
    signature = identity.sign(SIGNING_DOMAIN + body)
    wire = msgpack.packb([body, signature], use_bin_type=True)
    if len(wire) > MAX_RECORD_BYTES:
        raise OversizedRecord(f"record is {len(wire)} bytes; the limit is {MAX_RECORD_BYTES}")
    return SignedRecord(record, wire, signature)


def _unpack_strict(data: bytes, max_len: int) -> Any:
    try:
        return unpack_strict(data, max_len=max_len)
    except NotMsgpack as exc:
        raise MalformedRecord(f"not a msgpack record: {exc}") from None


def verify(wire: Any, now: float | None = None) -> SignedRecord:
    """The one path every incoming record goes through."""
    if not isinstance(wire, bytes):
        raise MalformedRecord(f"a record is bytes, not {type(wire).__name__}")
    if len(wire) > MAX_RECORD_BYTES:
        raise OversizedRecord(f"record is {len(wire)} bytes; the limit is {MAX_RECORD_BYTES}")
    outer = _unpack_strict(wire, MAX_RECORD_BYTES)
    if (
        not isinstance(outer, list)
        or len(outer) != 2
        or type(outer[0]) is not bytes
        or type(outer[1]) is not bytes
        or len(outer[1]) != SIGNATURE_BYTES
    ):
        raise MalformedRecord("a record is [body, 64-byte signature]")
    body, signature = outer
    if msgpack.packb(outer, use_bin_type=True) != wire:
        raise MalformedRecord("record is not canonically encoded")
    values = _unpack_strict(body, MAX_RECORD_BYTES)
    if not isinstance(values, list) or len(values) < 2:
        raise MalformedRecord("record body is not an array")
    if values[0] != FORMAT_VERSION or type(values[0]) is not int:
        raise MalformedRecord(f"unknown record format {values[0]!r}")
    cls = _RECORD_CLASSES.get(values[1]) if type(values[1]) is int else None
    if cls is None:
        raise MalformedRecord(f"unknown record kind {values[1]!r}")
    fields = values[2:]
    types = (*cls._types, *getattr(cls, "_optional_types", ()))
    if not len(cls._types) <= len(fields) <= len(types) or not all(
        type(v) is t for v, t in zip(fields, types[:len(fields)], strict=True)
    ):
        raise MalformedRecord(f"{cls.__name__} fields have the wrong shape")
    if msgpack.packb(values, use_bin_type=True) != body:
        raise MalformedRecord("record body is not canonically encoded")
    record = cls.from_fields(fields)
    record.check()
    if not verify_signature(record.signer, SIGNING_DOMAIN + body, signature):
        raise BadSignature("signature does not verify under the record's key")
    check_lifetime(record, time.time() if now is None else now)
    return SignedRecord(record, wire, signature)


def presence(
    identity: Identity,
    user: str,
    device: str,
    *,
    seq: int,
    supernode_key: bytes = b"",
    supernode_host: str = "",
    supernode_port: int = 0,
    online: bool = True,
    capabilities: tuple[str, ...] = (),
    lifetime_s: float = 300.0,
    now: float | None = None,
) -> SignedRecord:
    """Build and sign a presence record for ``identity``'s user."""
    t = time.time() if now is None else now
    record = PresenceRecord(
        user=user, user_key=identity.public_key, device=device, online=online,
        supernode_key=supernode_key, supernode_host=supernode_host,
        supernode_port=supernode_port, capabilities=capabilities, seq=seq,
        issued_at=float(t), expires_at=float(t + lifetime_s),
    )
    return sign(record, identity, now=t)


def supernode(
    identity: Identity,
    host: str,
    port: int,
    *,
    seq: int,
    relay_capacity_bps: int = 0,
    relay_spare_bps: int = 0,
    load: int = 0,
    max_clients: int = 0,
    coords: tuple[float, ...] = (),
    relay_udp_port: int = 0,
    lifetime_s: float = 300.0,
    now: float | None = None,
) -> SignedRecord:
    """Build and sign a supernode record for ``identity``'s node."""
    t = time.time() if now is None else now
    record = SupernodeRecord(
        node_key=identity.public_key, host=host, port=port,
        relay_capacity_bps=relay_capacity_bps, relay_spare_bps=relay_spare_bps, load=load,
        max_clients=max_clients, coords=tuple(float(c) for c in coords), seq=seq,
        issued_at=float(t), expires_at=float(t + lifetime_s), relay_udp_port=relay_udp_port,
    )
    return sign(record, identity, now=t)


def name_claim(
    identity: Identity,
    user: str,
    *,
    seq: int,
    lifetime_s: float = NAME_CLAIM_LIFETIME_S,
    now: float | None = None,
) -> SignedRecord:
    """Build and sign ``identity``'s claim on the name ``user``."""
    t = time.time() if now is None else now
    record = NameClaim(
        user=user, user_key=identity.public_key, seq=seq, issued_at=float(t),
        expires_at=float(t + lifetime_s),
    )
    return sign(record, identity, now=t)

"""Invites and answers: how two clients agree on a media session through supernodes.

Both are signed by the users' identity keys (domain-separated) and carry a fresh X25519 key
and the sender's candidate addresses. The receiver checks the signature against the key in the
sender's own presence records, so a supernode that forwards them can neither forge nor alter
them. The media key is X25519(invite key, answer key), bound to the hash of both signed
messages: end to end, and authenticated by both identity keys.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
from nacl.bindings import crypto_scalarmult
from nacl.public import PrivateKey

from overlay.core.addresses import Address
from overlay.core.identity import PUBLIC_KEY_BYTES, Identity, verify_signature
from overlay.core.offers import (
    ANSWER_DOMAIN,
    INVITE_DOMAIN,
    MAX_BITRATE_BPS,
    MAX_OFFER_BYTES,
    MIN_BITRATE_BPS,
    split_offer,
)
from overlay.core.records import NAME_PATTERN
from overlay.core.strict_msgpack import NotMsgpack, unpack_strict
from overlay.media.candidate_policy import ip_literal, public_of
from overlay.media.errors import MediaError

SESSION_ID_BYTES = 16
MAX_CANDIDATES = 8
MAX_RELAYS = 4
#: an invite older than this (or this far in the future) is refused: no replays
MAX_AGE_S = 120.0
NAT_TYPES = ("public", "cone", "symmetric", "no-udp", "unknown")
#: the keys an offer's 16th field (a map) may hold
EXTENSION_KEYS = ("path_salt", "bitrate_bps")
#: a path salt (:mod:`overlay.media.secure_stream`): each side's, sent in clear first on
#: every path, and the caller's in an invite
PATH_SALT_BYTES = 16


class SignallingError(MediaError):
    """A malformed, unsigned, stale or misdirected invite or answer."""


#: an invite's ``purpose``: a file transfer (the default, and what an older client sends)
#: or a call (:mod:`overlay.client.calls` runs it over the path)
FILE = "file"
CALL = "call"


@dataclass(frozen=True)
class Candidates:
    """Where a peer may be reached: TCP listeners (host and server-reflexive) and UDP
    addresses of its media socket (host and server-reflexive), plus its NAT type. Hosts are
    IP literals (a name is refused when parsed); which of them are dialled is
    :mod:`overlay.media.candidate_policy`'s decision.

    ``mapped_tcp``/``mapped_udp`` say which of ``tcp``/``udp`` are mappings the peer's
    router granted (PCP/NAT-PMP, :mod:`overlay.media.portmap`): public addresses that reach
    its listener or socket from anywhere. On the wire they are an optional fifth element
    ``[mapped_tcp, mapped_udp]``, present only when one is not empty; each must also be
    listed in ``tcp``/``udp``, so they change nothing about what is dialled."""

    tcp: tuple[Address, ...] = ()
    udp: tuple[Address, ...] = ()
    nat: str = "unknown"
    #: the supernode's dial-back succeeded: others can open TCP connections to us
    reachable: bool = False
    mapped_tcp: tuple[Address, ...] = ()
    mapped_udp: tuple[Address, ...] = ()

    def public_hosts(self) -> frozenset[str]:
        """The public addresses among these candidates (the side's reflexive ones)."""
        return public_of(h for h, _ in (*self.tcp, *self.udp))

    def to_wire(self) -> list[Any]:
        wire: list[Any] = [[list(a) for a in self.tcp], [list(a) for a in self.udp],
                           self.nat, self.reachable]
        if self.mapped_tcp or self.mapped_udp:
            wire.append([[list(a) for a in self.mapped_tcp], [list(a) for a in self.mapped_udp]])
        return wire

    @classmethod
    def from_wire(cls, value: Any) -> Candidates:
        if not isinstance(value, list) or len(value) not in (4, 5):
            raise SignallingError("candidates are [tcp, udp, nat, reachable(, mapped)]")
        tcp, udp, nat, reachable = value[:4]
        if nat not in NAT_TYPES or type(reachable) is not bool:
            raise SignallingError("bad nat type or reachable flag")
        out = cls(_addresses(tcp), _addresses(udp), nat, reachable)
        if len(value) == 4:
            return out
        mapped = value[4]
        if not isinstance(mapped, list) or len(mapped) != 2:
            raise SignallingError("mapped candidates are [tcp, udp]")
        mapped_tcp, mapped_udp = _addresses(mapped[0]), _addresses(mapped[1])
        if not set(mapped_tcp) <= set(out.tcp) or not set(mapped_udp) <= set(out.udp):
            raise SignallingError("a mapped candidate is also a candidate")
        return replace(out, mapped_tcp=mapped_tcp, mapped_udp=mapped_udp)


def _addresses(value: Any) -> tuple[Address, ...]:
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise SignallingError(f"at most {MAX_CANDIDATES} candidates of a kind")
    out = []
    for item in value:
        if (
            not isinstance(item, list) or len(item) != 2 or type(item[0]) is not str
            or len(item[0]) > 64 or type(item[1]) is not int or not 0 < item[1] < 65536
        ):
            raise SignallingError("a candidate is [host, port]")
        if ip_literal(item[0]) is None:
            raise SignallingError(f"a candidate host is an IP literal, not {item[0]!r}")
        out.append((item[0], item[1]))
    return tuple(out)


@dataclass(frozen=True)
class Offer:
    """The signed body shared by invites and answers."""

    kind: str  # "invite" or "answer"
    session_id: bytes
    from_user: str
    from_device: str
    from_key: bytes
    to_user: str
    ephemeral: bytes
    candidates: Candidates
    issued_at: float
    purpose: str = FILE
    #: answers: whether the callee accepts, and why not
    accept: bool = True
    reason: str = ""
    #: invites: relays the caller chose ([host, port, node key], best first) and the secret
    #: from which each relay's session token is derived
    relays: tuple[tuple[str, int, bytes], ...] = ()
    relay_secret: bytes = b""
    #: relay vouchers (:mod:`overlay.relay.voucher`): when they expire (Unix seconds) and
    #: this side's signature for each relay of the invite, in its order (the invite's
    #: sender signs as the caller, the answer's as the callee); none: ``0, ()``
    relay_expires: int = 0
    relay_sigs: tuple[bytes, ...] = ()
    #: invites of calls: each relay's datagram relay UDP port (0: none), in ``relays``'
    #: order; on the wire a 4th element of a relay's entry, only where not 0
    relay_udp_ports: tuple[int, ...] = ()
    #: invites: the caller's path salt (:class:`~overlay.media.secure_stream.InviteSalt`:
    #: the callee confirms each path at once); b"": none (an older caller's invite)
    path_salt: bytes = b""
    #: invites of calls: the caller's bitrate, for the callee to send at (0: not said)
    bitrate_bps: int = 0
    wire: bytes = field(default=b"", repr=False, compare=False)

    def fields(self) -> list[Any]:
        base = [self.kind, self.session_id, self.from_user, self.from_device, self.from_key,
                self.to_user, self.ephemeral, self.candidates.to_wire(), self.issued_at,
                self.purpose, self.accept, self.reason, self._relays_field(),
                self.relay_secret]
        extensions = self._extensions()
        if not extensions:
            return [*base, *self._voucher_field()]
        return [*base, (self._voucher_field() or [None])[0], extensions]

    def _extensions(self) -> dict[str, Any]:
        """The 16th field (:data:`EXTENSION_KEYS`), only when one is set."""
        out: dict[str, Any] = {}
        if self.path_salt:
            out["path_salt"] = self.path_salt
        if self.bitrate_bps:
            out["bitrate_bps"] = self.bitrate_bps
        return out

    def _relays_field(self) -> list[Any]:
        ports = self.relay_udp_ports
        return [[*r, ports[i]] if i < len(ports) and ports[i] else list(r)
                for i, r in enumerate(self.relays)]

    def _voucher_field(self) -> list[Any]:
        """The 15th field, only when there are signatures (an offer without is 14 fields,
        as before vouchers)."""
        return [[self.relay_expires, list(self.relay_sigs)]] if self.relay_sigs else []


def _domain(kind: str) -> bytes:
    return INVITE_DOMAIN if kind == "invite" else ANSWER_DOMAIN


def sign_offer(offer: Offer, identity: Identity) -> Offer:
    body = msgpack.packb(offer.fields(), use_bin_type=True)
    signature = identity.sign(_domain(offer.kind) + body)
    wire = msgpack.packb([body, signature], use_bin_type=True)
    return replace(offer, wire=wire)


def open_offer(wire: bytes, now: float | None = None) -> Offer:
    """Parse and verify the signature (by the key inside); the caller must still check that
    ``from_key`` is the key in ``from_user``'s presence records."""
    parts = split_offer(wire)
    if parts is None:
        raise SignallingError("not an offer: not msgpack([body, signature]) within limits")
    body, signature = parts
    try:
        values = unpack_strict(body, max_len=MAX_OFFER_BYTES, max_array=16,
                               max_map=len(EXTENSION_KEYS))
    except NotMsgpack as exc:
        raise SignallingError(f"not an offer: {exc}") from None
    if not isinstance(values, list) or len(values) not in (14, 15, 16):
        raise SignallingError("an offer has 14 fields, 15 with relay vouchers, or 16 with "
                              "extensions")
    (kind, session_id, from_user, from_device, from_key, to_user, ephemeral, candidates,
     issued_at, purpose, accept, reason, relays, relay_secret) = values[:14]
    if len(values) == 15 and values[14] is None:
        raise SignallingError("no relay vouchers is 14 fields")
    relay_expires, relay_sigs = _voucher_sigs(values[14] if len(values) >= 15 else None)
    path_salt, bitrate_bps = _extensions(values[15] if len(values) == 16 else None, kind,
                                         purpose)
    if not isinstance(relays, list) or len(relays) > MAX_RELAYS or not all(
        isinstance(r, list) and len(r) in (3, 4) and type(r[0]) is str and len(r[0]) <= 64
        and type(r[1]) is int and 0 < r[1] < 65536 and type(r[2]) is bytes
        and len(r[2]) == PUBLIC_KEY_BYTES
        and (len(r) == 3 or (type(r[3]) is int and 0 < r[3] < 65536)) for r in relays
    ):
        raise SignallingError(f"relays are up to {MAX_RELAYS} [host, port, node key] "
                              "or [host, port, node key, UDP port]")
    if any(ip_literal(r[0]) is None for r in relays):
        raise SignallingError("a relay host is an IP literal")
    if type(relay_secret) is not bytes or len(relay_secret) not in (0, 32):
        raise SignallingError("bad relay secret")
    if kind not in ("invite", "answer"):
        raise SignallingError(f"unknown offer kind {kind!r}")
    if type(session_id) is not bytes or len(session_id) != SESSION_ID_BYTES:
        raise SignallingError("bad session id")
    for name in (from_user, from_device, to_user):
        if type(name) is not str or not NAME_PATTERN.match(name):
            raise SignallingError("bad user or device name")
    for key in (from_key, ephemeral):
        if type(key) is not bytes or len(key) != PUBLIC_KEY_BYTES:
            raise SignallingError("bad key")
    if type(issued_at) is not float or not math.isfinite(issued_at) or type(accept) is not bool \
            or type(purpose) is not str or type(reason) is not str or len(reason) > 256:
        raise SignallingError("bad offer fields")
    if type(signature) is not bytes or not verify_signature(
            from_key, _domain(kind) + body, signature):
        raise SignallingError("offer signature does not verify")
    t = time.time() if now is None else now
    if abs(t - issued_at) > MAX_AGE_S:
        raise SignallingError("offer is stale or from the future")
    return Offer(kind, session_id, from_user, from_device, from_key, to_user, ephemeral,
                 Candidates.from_wire(candidates), issued_at, purpose, accept, reason,
                 tuple((r[0], r[1], r[2]) for r in relays), relay_secret, relay_expires,
                 relay_sigs, _udp_ports(relays), path_salt, bitrate_bps, wire=wire)


def _extensions(value: Any, kind: Any, purpose: Any) -> tuple[bytes, int]:
    """``(path_salt, bitrate_bps)`` from the 16th field: a map of :data:`EXTENSION_KEYS`
    only, not empty, in invites only; ``bitrate_bps`` in invites of calls only."""
    if value is None:
        return b"", 0
    if not isinstance(value, dict) or not value or not set(value) <= set(EXTENSION_KEYS) \
            or kind != "invite":
        raise SignallingError(f"an invite's extensions are a map of {EXTENSION_KEYS}")
    salt = value.get("path_salt", b"")
    bitrate = value.get("bitrate_bps", 0)
    if "path_salt" in value and (type(salt) is not bytes or len(salt) != PATH_SALT_BYTES):
        raise SignallingError(f"a path salt is {PATH_SALT_BYTES} bytes")
    if "bitrate_bps" in value and (type(bitrate) is not int or purpose != CALL
                                   or not MIN_BITRATE_BPS <= bitrate <= MAX_BITRATE_BPS):
        raise SignallingError(f"a call's bitrate is {MIN_BITRATE_BPS} to {MAX_BITRATE_BPS}")
    return salt, bitrate


def _udp_ports(relays: list[list[Any]]) -> tuple[int, ...]:
    """The relays' UDP ports (0: none), or () when none has one."""
    ports = tuple(int(r[3]) if len(r) == 4 else 0 for r in relays)
    return ports if any(ports) else ()


def _voucher_sigs(value: Any) -> tuple[int, tuple[bytes, ...]]:
    """``[expires_at: int, [signature: bin(64), ...]]`` (at most one per relay)."""
    if value is None:
        return 0, ()
    if (not isinstance(value, list) or len(value) != 2 or type(value[0]) is not int
            or not 0 < value[0] < 2**63 or not isinstance(value[1], list)
            or not 0 < len(value[1]) <= MAX_RELAYS
            or not all(type(sig) is bytes and len(sig) == 64 for sig in value[1])):
        raise SignallingError(f"relay vouchers are [expires_at, up to {MAX_RELAYS} signatures]")
    return value[0], tuple(value[1])


@dataclass
class MediaKeys:
    """One side's ephemeral X25519 key for a session."""

    private: PrivateKey = field(default_factory=PrivateKey.generate)

    @property
    def public(self) -> bytes:
        return bytes(self.private.public_key)

    def shared_secret(self, peer_public: bytes) -> bytes:
        secret = crypto_scalarmult(bytes(self.private), peer_public)
        if secret == bytes(32):
            raise SignallingError("degenerate X25519 key")
        return secret


def transcript_hash(invite: Offer, answer: Offer) -> bytes:
    return hashlib.blake2b(invite.wire + answer.wire, digest_size=32,
                           person=b"overlay-media").digest()


def new_session_id() -> bytes:
    return os.urandom(SESSION_ID_BYTES)

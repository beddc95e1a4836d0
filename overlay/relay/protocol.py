"""The relay: two clients that cannot reach each other meet at a supernode, which forwards
raw bytes between exactly their two TCP connections, within a budget.

The relay listens on the supernode's TCP port (the same one as attachment; the first bytes
tell the two apart, see :mod:`overlay.node.tcp_service`). It never opens a connection anywhere and
the handshake has no address field: it only joins two connections that present the same
32-byte token, which the caller chose at random and sent the callee inside the signed
end-to-end invite, and only when the caller holds a credential (below). Media paths are
end-to-end encrypted above the relay (:mod:`overlay.media.secure_stream`), so a relay only
ever carries ciphertext.

Wire format (all integers big endian)::

    client -> relay   "OVRL" | version(1) | role(1) | token(32) | requested_rate_bps(8)
                      [version 2 only: credential(1) | voucher(264) when credential = 1]
    relay  -> client  status(1) | body_length(1) | body

``role`` is 0 for the caller ("A", creates the session and reserves its rate) and 1 for the
callee ("B", joins it). ``requested_rate_bps`` 0 asks for the relay's per-session cap.
A caller must hold a credential: ``credential`` 1 is a voucher signed by both users
(:mod:`overlay.relay.voucher`); 0 is none, which a caller may use only for a token that a
client attached to this supernode reserved (``RelayReserve`` on its attach session). A
version-1 hello is a version-2 hello with no credential. The callee needs none: holding the
token of a waiting session is its proof.
``status`` is 0 (OK: from the next byte on, the connection is a raw pipe to the peer; the
body is the session's limits, ``max_bytes(8) | max_seconds(4) | rate_bps(8)``) or 1
(REFUSED, the body is the reason in UTF-8; the relay then closes). The caller's answer comes
when the callee has joined (or ``"timeout"`` after the relay's pairing wait); the callee's at
once. Reasons: ``budget`` (the reservable rate is used up), ``sessions`` (the relay's session
limit, or the caller's IP holds too many), ``subnet limit`` (the caller's /24 or /48 holds
its sessions or its share of the budget), ``key limit`` (a key of the voucher, or the
reserving client, holds its sessions), ``unreserved`` (a caller with neither a voucher nor a
reservation), ``bad voucher``, ``voucher expired``, ``unknown token`` (a callee before its
caller, or a wrong token), ``token used`` (a third connection, also after the session
ended), ``relay disabled``, ``timeout`` (the callee did not come), ``bad hello``.

Modules: :mod:`overlay.relay.budget` (sans-IO admission and rate limiting),
:mod:`overlay.relay.voucher` and :mod:`overlay.relay.admission` (sans-IO: who may open a
session, and how many per IP, /24 and key),
:mod:`overlay.relay.server` (the asyncio side, inside a supernode),
:mod:`overlay.relay.client` (:func:`~overlay.relay.client.relay_connect`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from overlay.relay.errors import RelayError

MAGIC = b"OVRL"
VERSION = 2
VERSIONS = (1, 2)
ROLE_CALLER = 0
ROLE_CALLEE = 1
TOKEN_BYTES = 32
MAX_RATE_BPS = 2**64 - 1
CREDENTIAL_NONE = 0
CREDENTIAL_VOUCHER = 1

STATUS_OK = 0
STATUS_REFUSED = 1

REASON_BUDGET = "budget"
REASON_SESSIONS = "sessions"
REASON_SUBNET_LIMIT = "subnet limit"
REASON_KEY_LIMIT = "key limit"
REASON_UNRESERVED = "unreserved"
REASON_BAD_VOUCHER = "bad voucher"
REASON_VOUCHER_EXPIRED = "voucher expired"
REASON_UNKNOWN_TOKEN = "unknown token"
REASON_TOKEN_USED = "token used"
REASON_DISABLED = "relay disabled"
REASON_TIMEOUT = "timeout"
REASON_BAD_HELLO = "bad hello"

_HELLO = struct.Struct(">BB32sQ")
#: the first bytes every hello has: magic, version, role, token, rate (a version-1 hello)
HELLO_HEAD_BYTES = len(MAGIC) + _HELLO.size
#: a voucher on the wire (:mod:`overlay.relay.voucher`)
VOUCHER_BYTES = 264
#: the longest hello: version 2 with a voucher
MAX_HELLO_BYTES = HELLO_HEAD_BYTES + 1 + VOUCHER_BYTES
_LIMITS = struct.Struct(">QIQ")


class BadHello(RelayError, ValueError):
    """The first bytes are not a relay hello this relay understands."""


@dataclass(frozen=True)
class Hello:
    role: int
    token: bytes
    requested_rate_bps: int
    #: the voucher's bytes (checked by :mod:`overlay.relay.voucher`), or None
    voucher: bytes | None = None
    version: int = VERSION


@dataclass(frozen=True)
class SessionLimits:
    """What an OK status tells each end about its session: the relay ends it after
    ``max_bytes`` (both directions together) or ``max_seconds`` from pairing."""

    max_bytes: int
    max_seconds: int
    rate_bps: int


def encode_hello(role: int, token: bytes, requested_rate_bps: int,
                 voucher: bytes | None = None) -> bytes:
    if role not in (ROLE_CALLER, ROLE_CALLEE):
        raise ValueError("role is ROLE_CALLER (0) or ROLE_CALLEE (1)")
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"a relay token is {TOKEN_BYTES} bytes")
    if not 0 <= requested_rate_bps <= MAX_RATE_BPS:
        raise ValueError("the requested rate is 0 .. 2**64-1 bits/s")
    if voucher is not None and len(voucher) != VOUCHER_BYTES:
        raise ValueError(f"a voucher is {VOUCHER_BYTES} bytes")
    head = MAGIC + _HELLO.pack(VERSION, role, token, requested_rate_bps)
    if voucher is None:
        return head + bytes([CREDENTIAL_NONE])
    return head + bytes([CREDENTIAL_VOUCHER]) + voucher


def hello_length(data: bytes) -> int | None:
    """How long the hello that ``data`` starts is, or None while that is not known yet;
    raises :class:`BadHello` as soon as the first bytes cannot be a hello."""
    if len(data) >= len(MAGIC) and not data.startswith(MAGIC):
        raise BadHello("not a relay hello")
    if len(data) <= len(MAGIC):
        return None
    version = data[len(MAGIC)]
    if version not in VERSIONS:
        raise BadHello(f"version {version}")
    if version == 1:
        return HELLO_HEAD_BYTES
    if len(data) <= HELLO_HEAD_BYTES:
        return None
    credential = data[HELLO_HEAD_BYTES]
    if credential == CREDENTIAL_NONE:
        return HELLO_HEAD_BYTES + 1
    if credential == CREDENTIAL_VOUCHER:
        return MAX_HELLO_BYTES
    raise BadHello(f"credential {credential}")


def decode_hello(data: bytes) -> Hello:
    """Magic and one whole hello (exactly :func:`hello_length` bytes); raises
    :class:`BadHello`."""
    if hello_length(data) != len(data):
        raise BadHello("not a relay hello")
    version, role, token, rate = _HELLO.unpack_from(data, len(MAGIC))
    if role not in (ROLE_CALLER, ROLE_CALLEE):
        raise BadHello(f"role {role}")
    voucher = data[HELLO_HEAD_BYTES + 1:] if len(data) == MAX_HELLO_BYTES else None
    return Hello(role, token, rate, voucher, version)


def encode_limits(limits: SessionLimits) -> bytes:
    return _LIMITS.pack(min(limits.max_bytes, 2**64 - 1), min(limits.max_seconds, 2**32 - 1),
                        min(limits.rate_bps, MAX_RATE_BPS))


def encode_status(ok: bool, reason: str = "", limits: SessionLimits | None = None) -> bytes:
    if ok:
        raw = encode_limits(limits) if limits is not None else b""
    else:
        raw = reason.encode()[:255]
    return bytes([STATUS_OK if ok else STATUS_REFUSED, len(raw)]) + raw


def decode_status(data: bytes) -> tuple[bool, str, int] | None:
    """``(ok, reason, bytes used)``, or None while incomplete; raises ValueError. (An OK's
    body, the limits, is read by :func:`decode_limits`; its ``reason`` is ``""``.)"""
    if len(data) < 2 or len(data) < 2 + data[1]:
        return None
    status, length = data[0], data[1]
    if status not in (STATUS_OK, STATUS_REFUSED):
        raise ValueError(f"status {status}")
    if status == STATUS_OK:
        return True, "", 2 + length
    reason = data[2:2 + length].decode(errors="replace")
    return False, reason, 2 + length


def decode_limits(data: bytes) -> SessionLimits | None:
    """The limits in an OK status (whole status bytes), or None when it carries none (a
    version-1 relay's OK); raises ValueError on anything else."""
    parsed = decode_status(data)
    if parsed is None or not parsed[0]:
        raise ValueError("not an OK status")
    body = data[2:parsed[2]]
    if not body:
        return None
    if len(body) != _LIMITS.size:
        raise ValueError(f"an OK status body is {_LIMITS.size} bytes")
    return SessionLimits(*_LIMITS.unpack(body))

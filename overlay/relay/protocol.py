"""The relay: two clients that cannot reach each other meet at a supernode, which forwards
raw bytes between exactly their two TCP connections, within a budget.

The relay listens on the supernode's TCP port (the same one as attachment; the first bytes
tell the two apart, see :mod:`overlay.node.tcp_service`). It never opens a connection anywhere and
the handshake has no address field: it only joins two connections that present the same
32-byte token, which the caller chose at random and sent the callee inside the signed
end-to-end invite. Media paths are end-to-end encrypted above the relay
(:mod:`overlay.media.secure_stream`), so a relay only ever carries ciphertext.

Wire format (all integers big endian)::

    client -> relay   "OVRL" | version(1) = 1 | role(1) | token(32) | requested_rate_bps(8)
    relay  -> client  status(1) | reason_length(1) | reason (UTF-8, <= 255 bytes)

``role`` is 0 for the caller ("A", creates the session and reserves its rate) and 1 for the
callee ("B", joins it). ``requested_rate_bps`` 0 asks for the relay's per-session cap.
``status`` is 0 (OK: from the next byte on, the connection is a raw pipe to the peer) or 1
(REFUSED, ``reason`` says why; the relay then closes). The caller's answer comes when the
callee has joined (or ``"timeout"`` after the relay's pairing wait); the callee's at once.
Reasons: ``budget`` (the reservable rate is used up), ``sessions`` (the relay's session limit,
or the caller's IP holds too many), ``unknown token`` (a callee before its caller, or a wrong
token), ``token used`` (a third connection, also after the session ended), ``relay disabled``,
``timeout`` (the callee did not come), ``bad hello``.

Modules: :mod:`overlay.relay.budget` (sans-IO admission and rate limiting),
:mod:`overlay.relay.server` (the asyncio side, inside a supernode),
:mod:`overlay.relay.client` (:func:`~overlay.relay.client.relay_connect`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from overlay.relay.errors import RelayError

MAGIC = b"OVRL"
VERSION = 1
ROLE_CALLER = 0
ROLE_CALLEE = 1
TOKEN_BYTES = 32
MAX_RATE_BPS = 2**64 - 1

STATUS_OK = 0
STATUS_REFUSED = 1

REASON_BUDGET = "budget"
REASON_SESSIONS = "sessions"
REASON_UNKNOWN_TOKEN = "unknown token"
REASON_TOKEN_USED = "token used"
REASON_DISABLED = "relay disabled"
REASON_TIMEOUT = "timeout"
REASON_BAD_HELLO = "bad hello"

_HELLO = struct.Struct(">BB32sQ")
#: the client's first bytes: magic and hello
HELLO_BYTES = len(MAGIC) + _HELLO.size


class BadHello(RelayError, ValueError):
    """The first bytes are not a relay hello this relay understands."""


@dataclass(frozen=True)
class Hello:
    role: int
    token: bytes
    requested_rate_bps: int


def encode_hello(role: int, token: bytes, requested_rate_bps: int) -> bytes:
    if role not in (ROLE_CALLER, ROLE_CALLEE):
        raise ValueError("role is ROLE_CALLER (0) or ROLE_CALLEE (1)")
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"a relay token is {TOKEN_BYTES} bytes")
    if not 0 <= requested_rate_bps <= MAX_RATE_BPS:
        raise ValueError("the requested rate is 0 .. 2**64-1 bits/s")
    return MAGIC + _HELLO.pack(VERSION, role, token, requested_rate_bps)


def decode_hello(data: bytes) -> Hello:
    """Magic and hello (exactly :data:`HELLO_BYTES`); raises :class:`BadHello`."""
    if len(data) != HELLO_BYTES or not data.startswith(MAGIC):
        raise BadHello("not a relay hello")
    version, role, token, rate = _HELLO.unpack_from(data, len(MAGIC))
    if version != VERSION:
        raise BadHello(f"version {version}")
    if role not in (ROLE_CALLER, ROLE_CALLEE):
        raise BadHello(f"role {role}")
    return Hello(role, token, rate)


def encode_status(ok: bool, reason: str = "") -> bytes:
    raw = reason.encode()[:255]
    return bytes([STATUS_OK if ok else STATUS_REFUSED, len(raw)]) + raw


def decode_status(data: bytes) -> tuple[bool, str, int] | None:
    """``(ok, reason, bytes used)``, or None while incomplete; raises ValueError."""
    if len(data) < 2 or len(data) < 2 + data[1]:
        return None
    status, length = data[0], data[1]
    if status not in (STATUS_OK, STATUS_REFUSED):
        raise ValueError(f"status {status}")
    reason = data[2:2 + length].decode(errors="replace")
    return status == STATUS_OK, reason, 2 + length

"""Anti-amplification for DHT answers (sans-IO): QUIC's 3x rule and WireGuard's cookie.

A UDP source address is spoofable, so until the address has *proven* that it receives what
is sent to it, no answer to it is larger than :data:`AMPLIFICATION_FACTOR` times the request
datagram. An address is proven when

* it answered a request this node sent to it (the answer carried our random msg_id), or
* a request from it carried a valid cookie: ``HMAC-SHA256(secret, ip | port | sender_key)``
  truncated to :data:`COOKIE_BYTES`, which this node handed out only *to* that address.

Either way the proof names the key whose holder received there (the answer's sender, the
cookie's ``sender_key``): that is what a verification ping shows, so a node proven so need not
be pinged (:meth:`AddressGate.proven_for`).

The secret rotates every :data:`COOKIE_ROTATE_S`; a cookie made with the current or the
previous secret is accepted (so a cookie lives 2 to 4 minutes). Proven addresses are
remembered for :data:`PROVEN_TTL_S`, at most :data:`MAX_PROVEN` of them (least recently
proven forgotten first).

The verification ping sent to an unknown sender's source address (to admit it to the routing
table) goes to a proven address at once; to an unproven one only when the ping is no larger
than the request that triggered it (factor 1: no amplification) and within a budget of
:data:`VERIFY_PINGS_PER_S` per source /24 (IPv6: /48), so it cannot be aimed at a victim
network faster than that.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

import msgpack

AMPLIFICATION_FACTOR = 3
COOKIE_BYTES = 16
COOKIE_ROTATE_S = 120.0
PROVEN_TTL_S = 600.0
MAX_PROVEN = 65536
#: verification pings to unproven addresses, per source /24 (IPv6 /48): rate and burst
VERIFY_PINGS_PER_S = 10.0
VERIFY_PING_BURST = 20.0


class AddressGate:
    """Which source addresses may receive answers larger than 3x their request."""

    def __init__(self, now: float, max_proven: int = MAX_PROVEN) -> None:
        self.max_proven = max_proven
        self._secret = os.urandom(32)
        self._previous = os.urandom(32)
        self._rotated_at = now
        #: proven addresses: until when, and the key whose datagram proved it
        self._proven: OrderedDict[tuple[str, int], tuple[float, bytes | None]] = OrderedDict()

    def _rotate(self, now: float) -> None:
        if now - self._rotated_at >= COOKIE_ROTATE_S:
            self._previous = self._secret if now - self._rotated_at < 2 * COOKIE_ROTATE_S \
                else os.urandom(32)
            self._secret = os.urandom(32)
            self._rotated_at = now

    @staticmethod
    def _mac(secret: bytes, addr: tuple[str, int], sender_key: bytes) -> bytes:
        msg = addr[0].encode() + b"|" + addr[1].to_bytes(2, "big") + b"|" + sender_key
        return hmac.new(secret, msg, hashlib.sha256).digest()[:COOKIE_BYTES]

    def cookie(self, addr: tuple[str, int], sender_key: bytes, now: float) -> bytes:
        """The cookie to hand to ``addr`` (sent only to ``addr`` itself)."""
        self._rotate(now)
        return self._mac(self._secret, addr, sender_key)

    def check_cookie(
        self, cookie: bytes, addr: tuple[str, int], sender_key: bytes, now: float
    ) -> bool:
        """A valid cookie proves ``addr``; True when it was valid."""
        self._rotate(now)
        if len(cookie) != COOKIE_BYTES:
            return False
        for secret in (self._secret, self._previous):
            if hmac.compare_digest(cookie, self._mac(secret, addr, sender_key)):
                self.prove(addr, now, sender_key)
                return True
        return False

    def prove(self, addr: tuple[str, int], now: float, key: bytes | None = None) -> None:
        """``addr`` received what we sent it: ``key``'s holder answered from there (an
        answer authenticated by ``key`` to our random msg_id, or ``key``'s valid cookie)."""
        self._proven.pop(addr, None)
        self._proven[addr] = (now + PROVEN_TTL_S, key)
        while len(self._proven) > self.max_proven:
            self._proven.popitem(last=False)

    def is_proven(self, addr: tuple[str, int], now: float) -> bool:
        return self._live(addr, now) is not None

    def proven_for(self, addr: tuple[str, int], key: bytes, now: float) -> bool:
        """Whether ``key``'s holder proved it receives at ``addr`` (what a verification
        ping would show), within :data:`PROVEN_TTL_S`."""
        entry = self._live(addr, now)
        return entry is not None and entry[1] == key

    def _live(self, addr: tuple[str, int], now: float) -> tuple[float, bytes | None] | None:
        entry = self._proven.get(addr)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._proven[addr]
            return None
        return entry

    @staticmethod
    def allowed(request_bytes: int) -> int:
        """The largest answer an unproven address may receive for this request."""
        return AMPLIFICATION_FACTOR * request_bytes


def trim_contacts(result: object, excess: int) -> dict[str, Any] | None:
    """A ``find_value`` answer that holds values, with its contacts cut from the farthest
    until about ``excess`` bytes are gone; None when it holds no values (the contacts are
    then the answer) or its values alone are too large. An unproven requester gets the
    values it asked for at once, with fewer hints where to look next, instead of a cookie
    round trip."""
    if not isinstance(result, dict) or set(result) != {"values", "nodes"} \
            or not result["values"]:
        return None
    nodes = list(result["nodes"])
    while nodes and excess > 0:
        excess -= len(msgpack.packb(nodes.pop(), use_bin_type=True))
    if excess > 0:
        return None
    return {"values": result["values"], "nodes": nodes}


"""One end of a call bound at a datagram relay (:mod:`overlay.relay.datagram`), sans-IO.

:class:`RelayBinding` sends ALLOCATE with the relay hello (role, token, rate, credential),
answers the relay's CHALLENGE with the cookie it names, retransmits every
:data:`RETRANSMIT_S` until a STATUS, and gives up after ``timeout_s`` ("no answer"). The
callee may come first: ``unknown token`` means "not yet", and it keeps asking. Once
bound it sends a KEEPALIVE every :data:`KEEPALIVE_S`, well within the relay's consent
window (:data:`~overlay.relay.datagram.CONSENT_S`), so the relay keeps forwarding to this end
even while it has nothing else to send; :meth:`RelayBinding.release` ends the session at the
relay (RELEASE with the token) when the path is done with, or abandoned while binding, so its
reservation does not wait for the relay's timeouts. Only datagrams from the relay's address that are
well-formed CHALLENGE or STATUS messages are taken; everything else is left to the caller
(the path's own traffic).

Messages and time in, datagrams (all to the relay) out; the asyncio side is the caller's
(:mod:`overlay.call.udp_io`, :mod:`overlay.media.relay_udp`).
"""

from __future__ import annotations

from overlay.relay.datagram import (
    CHALLENGE,
    CONSENT_S,
    COOKIE_BYTES,
    KEEPALIVE,
    MAGIC,
    RELEASE,
    STATUS,
    VERSION,
    encode_allocate,
    encode_control,
)
from overlay.relay.protocol import (
    REASON_UNKNOWN_TOKEN,
    SessionLimits,
    decode_hello,
    decode_limits,
    decode_status,
)

Address = tuple[str, int]

#: ALLOCATE retransmission interval, the longest wait for the relay's STATUS, and the
#: keepalive interval once bound (under the relay's consent window)
RETRANSMIT_S = 0.25
BIND_TIMEOUT_S = 20.0
KEEPALIVE_S = CONSENT_S / 3

BINDING = "binding"
BOUND = "bound"
REFUSED = "refused"
#: the reason when the relay never answered, and when this end released the session
NO_ANSWER = "no answer"
RELEASED = "released"
_HEAD_BYTES = len(MAGIC) + 2


def is_relay_control(data: bytes) -> bool:
    """Whether ``data`` looks like a datagram relay control message (a client takes
    CHALLENGE and STATUS)."""
    return (len(data) >= _HEAD_BYTES and data[:len(MAGIC)] == MAGIC
            and data[len(MAGIC)] == VERSION and data[len(MAGIC) + 1] in (CHALLENGE, STATUS))


class RelayBinding:
    """Binding one end (role and token in ``hello``) at the datagram relay ``relay``."""

    def __init__(self, relay: Address, hello: bytes, now: float, *,
                 timeout_s: float = BIND_TIMEOUT_S, retransmit_s: float = RETRANSMIT_S,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self.relay = relay
        self.hello = hello
        self.token = decode_hello(hello).token
        self.retransmit_s = retransmit_s
        self.keepalive_s = keepalive_s
        self.deadline = now + timeout_s
        self.cookie = bytes(COOKIE_BYTES)
        self.state = BINDING
        #: why the relay refused (or :data:`NO_ANSWER`), once :data:`REFUSED`
        self.reason = ""
        #: the session's limits, once :data:`BOUND`
        self.limits: SessionLimits | None = None
        self._due = now

    def _allocate(self, now: float) -> list[bytes]:
        self._due = now + self.retransmit_s
        return [encode_allocate(self.cookie, self.hello)]

    def datagram_received(self, data: bytes, addr: Address, now: float) -> list[bytes]:
        """A datagram from ``addr``: what to send to the relay in answer (a CHALLENGE is
        answered at once)."""
        if addr != self.relay or not is_relay_control(data) or self.state == REFUSED:
            return []
        kind, body = data[len(MAGIC) + 1], data[_HEAD_BYTES:]
        if kind == CHALLENGE:
            if self.state != BINDING or len(body) != COOKIE_BYTES:
                return []
            self.cookie = body
            return self._allocate(now)
        try:
            parsed = decode_status(body)
        except ValueError:
            return []
        if parsed is None:
            return []
        ok, reason, _ = parsed
        if not ok and reason == REASON_UNKNOWN_TOKEN and self.state == BINDING:
            return []  # the caller's end is not there yet: keep asking until the deadline
        if not ok:
            self.state, self.reason = REFUSED, reason
        elif self.state == BINDING:
            self.state = BOUND
            self.limits = decode_limits(body) or SessionLimits(0, 0, 0)
            self._due = now + self.keepalive_s
        return []

    def release(self) -> list[bytes]:
        """End the session at the relay (a caller's waiting one too): the RELEASE to send,
        none when the relay has refused or ended it already."""
        if self.state == REFUSED:
            return []
        self.state, self.reason = REFUSED, RELEASED
        return [encode_control(RELEASE, self.token)]

    def timer(self, now: float) -> list[bytes]:
        """What is due at ``now``: a retransmitted ALLOCATE, or a KEEPALIVE once bound."""
        if self.state == REFUSED:
            return []
        if self.state == BINDING and now >= self.deadline:
            self.state, self.reason = REFUSED, NO_ANSWER
            return []
        if now < self._due:
            return []
        if self.state == BINDING:
            return self._allocate(now)
        self._due = now + self.keepalive_s
        return [encode_control(KEEPALIVE)]

    def next_timer(self) -> float:
        """When :meth:`timer` has something to do next (inf once refused)."""
        if self.state == REFUSED:
            return float("inf")
        if self.state == BINDING:
            return min(self._due, self.deadline)
        return self._due

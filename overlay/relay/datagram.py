"""The datagram relay, sans-IO: UDP forwarding for calls between exactly two proven
addresses, under the same credentials, admission and budget as the TCP relay.

A supernode runs one :class:`DatagramRelay` next to its :class:`~overlay.relay.server.RelayServer`
and gives it the server's :class:`~overlay.relay.admission.RelayAdmission`, its
:class:`~overlay.relay.budget.Budget` and its node key: a datagram session counts against the
same per-IP, per-/24 and per-key limits, reserves its rate from the same budget B, and is
admitted with the same credentials (a voucher signed by both users naming this relay, or a
reservation of an attached client), with the same refusal reasons.

Wire format (UDP; all integers big endian)::

    control   = "OVRD" | version(1) = 1 | type(1) | body
    ALLOCATE  (type 0, client -> relay): cookie(16) | hello
    CHALLENGE (type 1, relay -> client): cookie(16)
    STATUS    (type 2, relay -> client): status      (as the TCP relay's, limits included)
    KEEPALIVE (type 3, client -> relay): empty       (renews this address's consent)
    RELEASE   (type 4, client -> relay): token(32)   (ends the session at once)
    data      = any datagram from a bound address that does not start with "OVRD"

``hello`` is the TCP relay's hello (:mod:`overlay.relay.protocol`: role, token, requested
rate, credential). An ALLOCATE whose cookie is not the one this relay gives this address and
token gets a CHALLENGE with it and allocates nothing (a stateless cookie, BLAKE2b keyed by a
relay secret over address, port, token and a 30 s epoch; the previous epoch's is still
taken), so only an address that receives at its source address can bind. The caller
(role 0) then allocates a session exactly as over TCP; the callee (role 1) joins it with
the token; both get STATUS OK when the session is paired (a retransmitted ALLOCATE from a
bound address gets it again). From then on the relay forwards data between the two bound
addresses only, charging each datagram to the session's and the relay's token buckets (a
datagram the budget cannot take now is dropped, never queued). An ALLOCATE with the token
of a paired session from a new proven address moves that role there (NAT rebinding, a new
local socket).

Anti-amplification: every answer is at most as long as the datagram that caused it; data go
only to an address that proved itself with the cookie, that sent something in the last
:data:`CONSENT_S` (consent freshness, as RFC 7675), and that has sent at least
1/:data:`AMPLIFICATION` of what the relay sent it (minus :data:`AMPLIFICATION_ALLOWANCE`).

Sessions end as over TCP: pairing timeout, idle (no data for :data:`IDLE_TIMEOUT_S`), and
the budget's byte and duration limits; or when one end, done with the call, sends RELEASE
from its bound address with the session's token (a spoofed source without the token ends
nothing): its reservation goes back to the budget at once, not after the idle timeout.
Their tokens are then refused as ``token used``. ``on_change`` is called whenever a session
starts or ends (the supernode re-publishes its spare relay rate).
An address serves one session at a time (``address in use``).

Fast path: when a :class:`FastPath` is set (``fast_path``; the supernode's is the C
:mod:`overlay.relay._forwarder`), the core lends every paired session to it: the two
addresses, when each was last heard, how much the relay may still send to each (the
anti-amplification rule above, as room in bytes) and a credit it takes from the session's
and the relay's token buckets (:meth:`~overlay.relay.budget.Budget.lend`, at least
:data:`LEASE_MIN_BYTES`, at most :data:`LEASE_MAX_BYTES`). The fast path forwards a data
datagram only if the same rules let it through, within the credit; everything else comes
here, and the core first takes the lease back (what was forwarded, heard and left of the
credit, which goes back to the buckets), decides as without a fast path, and lends the session
again when it is done with the input. :meth:`tick` takes every lease back, so ``stats``
and the idle timeout are at most one tick behind the fast path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from overlay.core.addresses import network_key
from overlay.relay.admission import Holding, RelayAdmission, Reservation
from overlay.relay.budget import Budget, BudgetConfig, Refusal, SessionBudget
from overlay.relay.protocol import (
    REASON_BAD_HELLO,
    REASON_TIMEOUT,
    REASON_TOKEN_USED,
    REASON_UNKNOWN_TOKEN,
    REASON_UNRESERVED,
    ROLE_CALLER,
    BadHello,
    Hello,
    SessionLimits,
    decode_hello,
    encode_status,
)
from overlay.relay.voucher import VoucherRefused, check_voucher, token_hash

MAGIC = b"OVRD"
VERSION = 1
ALLOCATE, CHALLENGE, STATUS, KEEPALIVE, RELEASE = 0, 1, 2, 3, 4
COOKIE_BYTES = 16
_HEAD = struct.Struct(">4sBB")
#: the largest datagram taken (control or data)
MAX_DATAGRAM_BYTES = 1400
COOKIE_EPOCH_S = 30.0
PAIR_TIMEOUT_S = 15.0
IDLE_TIMEOUT_S = 60.0
CONSENT_S = 10.0
AMPLIFICATION = 3
AMPLIFICATION_ALLOWANCE = 16 * 1024
#: what a session may forward at once when it pairs, beyond its rate: one QUIC handshake
#: both ways (~4-5 KB through the relay) and the first frames after it. With only the 4 KiB
#: buckets, every relayed call had 2-6 datagrams dropped for budget at its start, now and
#: then a call frame among them (lost: QUIC does not resend DATAGRAM frames)
START_CREDIT_BYTES = 12 * 1024
#: a session is lent to the fast path with at least one largest datagram of credit, and at
#: most this much (the core sees every session again after at most this many bytes)
LEASE_MIN_BYTES = MAX_DATAGRAM_BYTES
LEASE_MAX_BYTES = 64 * 1024
USED_TOKEN_TTL_S = 600.0
USED_TOKENS_MAX = 4096
#: why a session ended when an end released it
ENDED_RELEASED = "released"

REASON_ADDRESS_IN_USE = "address in use"
# reasons a datagram is dropped (not answered)
DROP_UNBOUND = "unbound"
DROP_UNPAIRED = "unpaired"
DROP_BUDGET = "budget"
DROP_CONSENT = "consent"
DROP_AMPLIFICATION = "amplification"
DROP_MALFORMED = "malformed"
DROP_COOKIE = "challenged"

Address = tuple[str, int]


@dataclass(frozen=True)
class Send:
    data: bytes
    addr: Address


@dataclass
class Peer:
    """One bound end of a session: what it proved and what it was sent."""

    addr: Address
    last_heard: float
    received: int = 0  # bytes the relay received from it
    sent: int = 0      # bytes the relay sent to it


#: what a lease did while it was lent: (received from, sent to, last heard) of the caller's
#: address, the same of the callee's, datagrams, bytes, last forward, credit left
LeaseUse = tuple[int, int, float, int, int, float, int, int, float, int]


class FastPath(Protocol):
    """Forwarding outside the core for the sessions it lends (see the module's doc)."""

    def put(self, a: Address, b: Address, heard_a: float, heard_b: float, room_a: int,
            room_b: int, credit: int, /) -> int: ...

    def take(self, handle: int, /) -> LeaseUse: ...


@dataclass(eq=False)
class DatagramSession:
    token: bytes
    budget: SessionBudget
    holding: Holding
    caller: Peer
    created_at: float
    callee: Peer | None = None
    last_forward: float = 0.0
    datagrams: int = 0
    #: its lease at the fast path, while lent
    lease: int | None = None

    def peer_of(self, addr: Address) -> tuple[Peer, Peer | None]:
        if self.caller.addr == addr:
            return self.caller, self.callee
        assert self.callee is not None and self.callee.addr == addr
        return self.callee, self.caller


@dataclass
class DatagramStats:
    #: sessions paired (calls relayed), datagrams and bytes forwarded
    calls: int = 0
    datagrams: int = 0
    bytes: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)


def encode_control(kind: int, body: bytes = b"") -> bytes:
    return _HEAD.pack(MAGIC, VERSION, kind) + body


def encode_allocate(cookie: bytes, hello: bytes) -> bytes:
    return encode_control(ALLOCATE, cookie.ljust(COOKIE_BYTES, b"\x00")[:COOKIE_BYTES] + hello)


def _room(peer: Peer) -> int:
    """What the relay may still send to ``peer`` (anti-amplification)."""
    return AMPLIFICATION * peer.received + AMPLIFICATION_ALLOWANCE - peer.sent


class DatagramRelay:
    def __init__(self, config: BudgetConfig, budget: Budget, admission: RelayAdmission, *,
                 node_key: bytes = b"", secret: bytes | None = None,
                 pair_timeout_s: float = PAIR_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 wall_offset: float = 0.0) -> None:
        self.config = config
        self.budget = budget
        self.admission = admission
        self.node_key = node_key
        self.pair_timeout_s = pair_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._secret = secret or os.urandom(32)
        self.sessions: dict[bytes, DatagramSession] = {}
        self.by_addr: dict[Address, DatagramSession] = {}
        self.stats = DatagramStats()
        self._used: OrderedDict[bytes, float] = OrderedDict()
        #: Unix time minus the ``now`` clock (voucher expiry is in Unix seconds)
        self.wall_offset = wall_offset
        #: called when a session starts or ends (its reservation changes the spare rate)
        self.on_change: Callable[[], None] | None = None
        self.fast_path: FastPath | None = None
        #: paired sessions to lend (again) when the current input is done
        self._to_lend: list[DatagramSession] = []

    # -- input -------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address, now: float) -> list[Send]:
        out = self._received(data, addr, now)
        self._lend_all(now)
        return out

    def _received(self, data: bytes, addr: Address, now: float) -> list[Send]:
        if len(data) > MAX_DATAGRAM_BYTES:
            self.stats.dropped[DROP_MALFORMED] += 1
            return []
        bound = self.by_addr.get(addr)
        if bound is not None:
            self._take_back(bound)
        if data[:len(MAGIC)] != MAGIC:
            return self._data(data, addr, now)
        if len(data) < _HEAD.size:
            self.stats.dropped[DROP_MALFORMED] += 1
            return []
        _, version, kind = _HEAD.unpack_from(data)
        if version != VERSION or kind not in (ALLOCATE, KEEPALIVE, RELEASE):
            self.stats.dropped[DROP_MALFORMED] += 1
            return []
        if kind == RELEASE:
            self._release(data[_HEAD.size:], addr, now)
            return []
        if kind == KEEPALIVE:
            session = self.by_addr.get(addr)
            if session is None:
                self.stats.dropped[DROP_UNBOUND] += 1
            else:
                peer, _ = session.peer_of(addr)
                peer.last_heard = now
                peer.received += len(data)
            return []
        return self._allocate(data, addr, now)

    def _release(self, token: bytes, addr: Address, now: float) -> None:
        """RELEASE: the session bound at ``addr`` ends, if ``token`` is its token."""
        session = self.by_addr.get(addr)
        if session is None:
            self.stats.dropped[DROP_UNBOUND] += 1
        elif not hmac.compare_digest(token, session.token):
            self.stats.dropped[DROP_MALFORMED] += 1
        else:
            self._end(session, ENDED_RELEASED, now)

    def _answer(self, request: bytes, addr: Address, status: bytes) -> list[Send]:
        """A STATUS answer, never longer than ``request`` (anti-amplification)."""
        return [Send(encode_control(STATUS, status)[:len(request)], addr)]

    def _refuse(self, request: bytes, addr: Address, reason: str) -> list[Send]:
        self.stats.refused[reason] += 1
        return self._answer(request, addr, encode_status(False, reason))

    def cookie(self, addr: Address, token: bytes, now: float, epochs_ago: int = 0) -> bytes:
        epoch = int(now // COOKIE_EPOCH_S) - epochs_ago
        material = f"{addr[0]}|{addr[1]}|{epoch}".encode() + token
        return hashlib.blake2b(material, key=self._secret, digest_size=COOKIE_BYTES,
                               person=b"ovl-relay-cookie").digest()

    def _allocate(self, data: bytes, addr: Address, now: float) -> list[Send]:
        body = data[_HEAD.size:]
        try:
            if len(body) < COOKIE_BYTES:
                raise BadHello("no cookie")
            hello = decode_hello(body[COOKIE_BYTES:])
        except BadHello:
            return self._refuse(data, addr, REASON_BAD_HELLO)
        cookie = body[:COOKIE_BYTES]
        known = self.sessions.get(hello.token)
        if known is not None:
            self._take_back(known)
        if not any(hmac.compare_digest(cookie, self.cookie(addr, hello.token, now, ago))
                   for ago in (0, 1)):
            self.stats.dropped[DROP_COOKIE] += 1
            return [Send(encode_control(CHALLENGE, self.cookie(addr, hello.token, now)), addr)]
        self._expire(now)
        session = self.sessions.get(hello.token)
        bound = self.by_addr.get(addr)
        if bound is not None and bound is not session:
            return self._refuse(data, addr, REASON_ADDRESS_IN_USE)
        if hello.role == ROLE_CALLER:
            if session is None:
                return self._open(data, addr, hello, now)
            if session.caller.addr == addr or session.callee is not None:
                return self._rebind(data, session, addr, caller=True, now=now)
            return self._refuse(data, addr, REASON_TOKEN_USED)
        if session is None:
            used = hello.token in self._used
            return self._refuse(data, addr, REASON_TOKEN_USED if used else REASON_UNKNOWN_TOKEN)
        if session.callee is None:
            if addr == session.caller.addr:
                return self._refuse(data, addr, REASON_ADDRESS_IN_USE)
            return self._pair(data, session, addr, hello, now)
        return self._rebind(data, session, addr, caller=False, now=now)

    def _open(self, data: bytes, addr: Address, hello: Hello, now: float) -> list[Send]:
        """A caller's first ALLOCATE: the TCP relay's admission, step by step."""
        if hello.token in self._used:
            return self._refuse(data, addr, REASON_TOKEN_USED)
        admission = self.admission
        refused = admission.address_refusal(addr[0])
        if refused is not None:
            return self._refuse(data, addr, refused[0])
        reservation: Reservation | None = None
        keys: tuple[bytes, ...]
        if hello.voucher is not None:
            try:
                keys = check_voucher(hello.voucher, self.node_key, hello.token,
                                     now + self.wall_offset).keys
            except VoucherRefused as exc:
                return self._refuse(data, addr, exc.reason)
        else:
            reservation = admission.reservation(token_hash(hello.token), now)
            if reservation is None:
                return self._refuse(data, addr, REASON_UNRESERVED)
            keys = (reservation.key,)
        refused = admission.key_refusal(keys, reservation.key if reservation else None)
        if refused is not None:
            return self._refuse(data, addr, refused[0])
        try:
            rate = self.budget.admit(hello.requested_rate_bps, now, network_key(addr[0]))
        except Refusal as exc:
            return self._refuse(data, addr, exc.reason)
        session = DatagramSession(hello.token, rate, admission.hold(addr[0], keys, reservation),
                                  Peer(addr, now, len(data)), now)
        self.sessions[hello.token] = session
        self.by_addr[addr] = session
        self._changed()
        return []  # the caller hears OK when its callee has come

    def _pair(self, data: bytes, session: DatagramSession, addr: Address, hello: Hello,
              now: float) -> list[Send]:
        self.budget.pair(session.budget, hello.requested_rate_bps, now)
        self.budget.start_credit(session.budget, START_CREDIT_BYTES)
        session.callee = Peer(addr, now, len(data))
        session.last_forward = now
        self.by_addr[addr] = session
        self.stats.calls += 1
        self._to_lend.append(session)
        ok = encode_status(True, limits=self.limits(session))
        return [*self._answer(data, addr, ok),
                Send(encode_control(STATUS, ok), session.caller.addr)]

    def _rebind(self, data: bytes, session: DatagramSession, addr: Address, *, caller: bool,
                now: float) -> list[Send]:
        """A retransmitted ALLOCATE (answered again), or one role moving to ``addr``."""
        old = session.caller if caller else session.callee
        assert old is not None
        if old.addr != addr:
            self.by_addr.pop(old.addr, None)
            self.by_addr[addr] = session
            old.addr, old.sent, old.received = addr, 0, 0
        old.last_heard = now
        old.received += len(data)
        if session.callee is None:
            return []
        return self._answer(data, addr, encode_status(True, limits=self.limits(session)))

    def limits(self, session: DatagramSession) -> SessionLimits:
        return SessionLimits(self.config.max_session_bytes,
                             max(1, round(self.config.max_session_s)), session.budget.rate_bps)

    # -- forwarding --------------------------------------------------------------------------

    def _data(self, data: bytes, addr: Address, now: float) -> list[Send]:
        session = self.by_addr.get(addr)
        if session is None:
            self.stats.dropped[DROP_UNBOUND] += 1
            return []
        src, dst = session.peer_of(addr)
        src.last_heard = now
        src.received += len(data)
        if dst is None:
            self.stats.dropped[DROP_UNPAIRED] += 1
            return []
        self._to_lend.append(session)
        if now - dst.last_heard > CONSENT_S:
            self.stats.dropped[DROP_CONSENT] += 1
            return []
        if len(data) > _room(dst):
            self.stats.dropped[DROP_AMPLIFICATION] += 1
            return []
        if self.budget.grant(session.budget, len(data), now) < len(data):
            limit = self.budget.exceeded(session.budget, now)
            if limit is not None:
                self._end(session, limit, now)
            self.stats.dropped[DROP_BUDGET] += 1
            return []
        dst.sent += len(data)
        session.last_forward = now
        session.datagrams += 1
        self.stats.datagrams += 1
        self.stats.bytes += len(data)
        return [Send(data, dst.addr)]

    # -- time --------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Send]:
        """End what timed out; call about once a second."""
        out: list[Send] = []
        for session in list(self.sessions.values()):
            self._take_back(session)
        for session in list(self.sessions.values()):
            if session.callee is None:
                if now - session.created_at >= self.pair_timeout_s:
                    self.stats.refused[REASON_TIMEOUT] += 1
                    out.append(Send(encode_control(STATUS, encode_status(False, REASON_TIMEOUT)),
                                    session.caller.addr))
                    self._end(session, REASON_TIMEOUT, now)
                continue
            limit = self.budget.exceeded(session.budget, now)
            if limit is not None:
                self._end(session, limit, now)
            elif now - session.last_forward >= self.idle_timeout_s:
                self._end(session, "idle", now)
        self._expire(now)
        self._lend_all(now)
        return out

    # -- the fast path -----------------------------------------------------------------------

    def _lend_all(self, now: float) -> None:
        for session in self._to_lend:
            if session.lease is None and self.sessions.get(session.token) is session:
                self._lend(session, now)
        self._to_lend.clear()

    def _lend(self, session: DatagramSession, now: float) -> None:
        callee = session.callee
        if self.fast_path is None or callee is None:
            return
        credit = self.budget.lend(session.budget, now, LEASE_MIN_BYTES, LEASE_MAX_BYTES)
        if credit == 0:
            return
        caller = session.caller
        try:
            session.lease = self.fast_path.put(caller.addr, callee.addr, caller.last_heard,
                                               callee.last_heard, _room(caller), _room(callee),
                                               credit)
        except ValueError:  # (not a numeric address: such a session stays in the core)
            self.budget.refund(session.budget, credit)

    def _take_back(self, session: DatagramSession) -> None:
        """End the session's lease, if it has one: what the fast path did becomes the core's."""
        if session.lease is None or self.fast_path is None:
            return
        (caller_received, caller_sent, caller_heard, callee_received, callee_sent, callee_heard,
         datagrams, nbytes, last_forward, credit) = self.fast_path.take(session.lease)
        session.lease = None
        caller, callee = session.caller, session.callee
        assert callee is not None  # (only paired sessions are lent)
        caller.received += caller_received
        caller.sent += caller_sent
        caller.last_heard = max(caller.last_heard, caller_heard)
        callee.received += callee_received
        callee.sent += callee_sent
        callee.last_heard = max(callee.last_heard, callee_heard)
        session.datagrams += datagrams
        session.last_forward = max(session.last_forward, last_forward)
        self.stats.datagrams += datagrams
        self.stats.bytes += nbytes
        self.budget.refund(session.budget, credit)
        self._to_lend.append(session)

    def _end(self, session: DatagramSession, reason: str, now: float) -> None:
        if self.sessions.get(session.token) is not session:
            return
        self._take_back(session)
        del self.sessions[session.token]
        for peer in (session.caller, session.callee):
            if peer is not None and self.by_addr.get(peer.addr) is session:
                del self.by_addr[peer.addr]
        self.admission.release(session.holding)
        self.budget.release(session.budget)
        self._used[session.token] = now
        while len(self._used) > USED_TOKENS_MAX:
            self._used.popitem(last=False)
        self.stats.ended[reason] += 1
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _expire(self, now: float) -> None:
        while self._used:
            token, at = next(iter(self._used.items()))
            if now - at < USED_TOKEN_TTL_S:
                break
            del self._used[token]

    def close(self, now: float) -> None:
        for session in list(self.sessions.values()):
            self._end(session, "closed", now)

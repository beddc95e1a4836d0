"""The relay server, one module (~500 lines) as pairing and forwarding share each callback.

It pairs two connections by token and forwards bytes between them.

:mod:`overlay.node.tcp_service` hands a connection over (:meth:`RelayServer.adopt`) when its
first four bytes are :data:`~overlay.relay.protocol.MAGIC`; from then on its ``ServedProtocol``
passes every callback to a :class:`RelayLink`. Forwarding happens in those protocol callbacks:
each chunk that arrives is charged to the budget (:mod:`overlay.relay.budget`) once and written
to the peer's transport as it is, or in slices when the budget allows only part of it now.

Back-pressure, never drops: while a session (or the relay) is over its rate, the relay stops
reading from the sender's socket (``pause_reading``) and resumes when the buckets have refilled
(a timer at the computed time); the same when the receiver's socket cannot take more
(``pause_writing`` on the receiver pauses reading from the sender). TCP then slows the sender
down. Only the per-session byte and duration limits end a session, with a logged reason.

The server never opens a connection: it only joins two that came to it with the same token.
A half-close is forwarded (``write_eof`` once the sender's bytes are through); when one side's
connection is gone, what it sent is still delivered, then the other side is closed. A session
that forwards nothing for :data:`IDLE_TIMEOUT_S` ends, a half-closed one after
:data:`HALF_CLOSED_IDLE_S` (a peer that never closes must not keep a reservation).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from overlay.core.addresses import network_key
from overlay.core.logs import get_logger
from overlay.relay.admission import Holding, RelayAdmission, Reservation
from overlay.relay.budget import DURATION_LIMIT, Budget, BudgetConfig, Refusal, SessionBudget
from overlay.relay.early_callees import EARLY_CALLEE_HOLD_S, EarlyCallees
from overlay.relay.protocol import (
    MAX_HELLO_BYTES,
    REASON_BAD_HELLO,
    REASON_DISABLED,
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
    hello_length,
)
from overlay.relay.voucher import VoucherRefused, check_voucher, token_hash

log = get_logger(__name__)

#: how long a caller waits at the relay for the callee
PAIR_TIMEOUT_S = 15.0
#: how long the relay waits for a complete hello after the magic
HELLO_TIMEOUT_S = 10.0
#: a paired session that forwards nothing this long ends; a half-closed one sooner
IDLE_TIMEOUT_S = 60.0
HALF_CLOSED_IDLE_S = 5.0
#: tokens of ended sessions are remembered (refused as "token used") this long, this many
USED_TOKEN_TTL_S = 600.0
USED_TOKENS_MAX = 4096
#: bytes a waiting caller may send before its answer (it should send none); then reading pauses
EARLY_BYTES_MAX = 64 * 1024

Tap = Callable[[str, bytes], None]


@dataclass
class RelayStats:
    refused: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    paired: int = 0
    #: seconds reading was paused because of the budget, summed over connections
    throttled_s: float = 0.0


class RelaySession:
    """One token: the caller's link, then the callee's."""

    def __init__(self, server: RelayServer, token: bytes, budget: SessionBudget,
                 caller: RelayLink, holding: Holding) -> None:
        self.server = server
        self.token = token
        self.budget = budget
        #: what the session counts against (caller IP, its /24, the credential's keys)
        self.holding = holding
        self.a = caller
        self.b: RelayLink | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self._bytes_seen = -1
        self.ended = False
        #: this session's logger (``caller=``; the callee is named when it arrives)
        self.log = log.bind(caller=caller.peer)

    def other(self, link: RelayLink) -> RelayLink | None:
        return self.b if link is self.a else self.a

    @property
    def half_closed(self) -> bool:
        return self.a.eof_forwarded or (self.b is not None and self.b.eof_forwarded)

    def watch_idle(self) -> None:
        """(Re)arm the idle check: a paired session that forwards nothing for
        ``idle_timeout_s`` ends ("idle"); once one direction has finished, for
        ``half_closed_idle_s`` ("half-closed idle": a peer that never closes its side
        must not hold a reservation)."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        server = self.server
        delay = server.half_closed_idle_s if self.half_closed else server.idle_timeout_s
        self._bytes_seen = self.budget.bytes
        self.idle_timer = asyncio.get_running_loop().call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.ended:
            return
        if self.budget.bytes != self._bytes_seen:
            self.watch_idle()
            return
        self.end("half-closed idle" if self.half_closed else "idle")

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        for timer in (self.timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.idle_timer = None
        self.server._ended(self, reason)
        self.a.close()
        if self.b is not None:
            self.b.close()


class RelayLink:
    """One relay connection: its hello, then its half of a session."""

    def __init__(self, server: RelayServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        #: this connection's logger (``peer=host:port``)
        self.log = log.bind(peer=self.peer)
        #: "hello", "waiting" (a caller before its callee), "early" (a callee before its
        #: caller), "paired", "closed"
        self.state = "hello"
        self.session: RelaySession | None = None
        self.role = -1
        #: an early callee's token and the rate its hello asked for
        self.token = b""
        self.requested_rate_bps = 0
        #: bytes this side sent that are not forwarded yet (never more than one read)
        self.held: memoryview | None = None
        #: this side sent EOF / its connection is gone / our EOF to the peer is out
        self.eof = False
        self.lost = False
        self.eof_forwarded = False
        #: this side's transport cannot take more writes right now
        self.write_paused = False
        self._hello = bytearray()
        self._reading = True
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            server.hello_timeout_s, self._hello_timeout)
        self._throttled_since: float | None = None

    @property
    def other(self) -> RelayLink | None:
        return self.session.other(self) if self.session is not None else None

    # -- protocol callbacks (from ServedProtocol) ---------------------------------------------

    def data_received(self, data: bytes) -> None:
        tap = self.server.tap
        if tap is not None:
            tap(self.peer, data)
        if self.state == "paired":
            self._hold(data)
            if self._timer is None:
                self.pump()
        elif self.state == "hello":
            have = len(self._hello)
            self._hello += data[:MAX_HELLO_BYTES - have]
            try:
                length = hello_length(bytes(self._hello))
            except BadHello as exc:
                self._cancel_timer()
                self.server._refuse(self, REASON_BAD_HELLO, str(exc))
                return
            if length is None or len(self._hello) < length:
                return
            self._cancel_timer()
            rest = bytes(self._hello[length:]) + data[MAX_HELLO_BYTES - have:]
            del self._hello[length:]
            if rest:
                self._hold(rest)
            self.server._on_hello(self, bytes(self._hello))
        elif self.state in ("waiting", "early"):
            # nothing should come before the answer; keep a little, then stop reading
            self._hold(data)
            if self.held is not None and len(self.held) > EARLY_BYTES_MAX:
                self._set_reading(False)

    def eof_received(self) -> bool:
        self.eof = True
        if self.state == "paired":
            if self._timer is None:
                self.pump()
        elif self.state == "waiting":
            self.server._abandon(self, "caller left")
        else:
            self.server._early_left(self)
            self.close()
        return True  # keep the transport open: the other direction may still be flowing

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.state == "waiting":
            self.server._abandon(self, "caller left")
        elif self.state == "early":
            self.server._early_left(self)
            self.close()
        elif self.state == "paired":
            other = self.other
            if other is not None:
                other.held = None  # nowhere to deliver it any more
            if self._timer is None:
                self.pump()  # deliver what this side sent, then end the session
        else:
            self.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        other = self.other
        if other is not None and other.state == "paired":
            other._set_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        other = self.other
        if other is not None and other.state == "paired" and other._timer is None:
            other.pump()

    # -- forwarding ---------------------------------------------------------------------------

    def pump(self) -> None:
        """Forward held bytes to the peer as far as the budget and the peer's buffer allow."""
        session, dst = self.session, self.other
        if session is None or dst is None or self.state != "paired" or session.ended:
            return
        budget = self.server.budget
        while self.held is not None:
            if dst.lost or dst.transport.is_closing():
                self.held = None
                break
            if dst.write_paused:
                self._set_reading(False)
                return
            now = time.monotonic()
            n = budget.grant(session.budget, len(self.held), now)
            if n == 0:
                limit = budget.exceeded(session.budget, now)
                if limit is not None:
                    session.end(limit)
                    return
                if self._throttled_since is None:
                    self._throttled_since = now
                self._set_reading(False)
                self._timer = self._loop.call_later(
                    budget.wait_s(session.budget, len(self.held), now), self._pump_later)
                return
            if n == len(self.held):
                chunk, self.held = self.held, None
            else:
                chunk, self.held = self.held[:n], self.held[n:]
            dst.transport.write(chunk)
            limit = budget.exceeded(session.budget, now)
            if limit is not None:
                session.end(limit)
                return
        self._unthrottled()
        if self.lost:
            session.end("closed")
        elif self.eof:
            if not self.eof_forwarded:
                self.eof_forwarded = True
                if not dst.transport.is_closing() and dst.transport.can_write_eof():
                    dst.transport.write_eof()
                session.watch_idle()
            if dst.eof_forwarded or dst.lost:
                session.end("closed")
        else:
            self._set_reading(not dst.write_paused)

    def _pump_later(self) -> None:
        self._timer = None
        self.pump()

    def _unthrottled(self) -> None:
        if self._throttled_since is not None:
            self.server.stats.throttled_s += time.monotonic() - self._throttled_since
            self._throttled_since = None

    def _hold(self, data: bytes) -> None:
        if self.held is None:
            self.held = memoryview(data)
        else:  # rare: only bytes that came before pairing
            self.held = memoryview(bytes(self.held) + data)

    def _set_reading(self, on: bool) -> None:
        if on == self._reading or self.eof or self.lost or self.transport.is_closing():
            return
        self._reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # -- ending -------------------------------------------------------------------------------

    def answer(self, ok: bool, reason: str = "", limits: SessionLimits | None = None) -> None:
        if not self.transport.is_closing():
            self.transport.write(encode_status(ok, reason, limits))

    def close(self) -> None:
        """Stop forwarding this side and close it once its write buffer is flushed."""
        self._cancel_timer()
        self._unthrottled()
        self.state = "closed"
        self.held = None
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hello_timeout(self) -> None:
        self._timer = None
        self.server.stats.refused["hello timeout"] += 1
        self.log.info("relay_refused", reason="no complete hello in time")
        self.close()


class RelayServer:
    """Sessions by token, the budget, and the relay's counters."""

    def __init__(
        self,
        config: BudgetConfig,
        *,
        pair_timeout_s: float = PAIR_TIMEOUT_S,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        early_callee_hold_s: float = EARLY_CALLEE_HOLD_S,
        node_key: bytes = b"",
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        half_closed_idle_s: float = HALF_CLOSED_IDLE_S,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.idle_timeout_s = idle_timeout_s
        self.half_closed_idle_s = half_closed_idle_s
        #: this supernode's node key: a voucher must name it (set by the supernode)
        self.node_key = node_key
        self.budget = Budget(config, time.monotonic())
        self.admission = RelayAdmission(config)
        self.pair_timeout_s = pair_timeout_s
        self.hello_timeout_s = hello_timeout_s
        self.early_callee_hold_s = early_callee_hold_s
        #: callees that came before their caller, held until it comes (or the hold ends)
        self.early: EarlyCallees[RelayLink] = EarlyCallees()
        self.on_change = on_change
        self.waiting: dict[bytes, RelaySession] = {}
        self.active: dict[bytes, RelaySession] = {}
        self.stats = RelayStats()
        #: called with (peer, bytes) for every chunk a relay connection delivers (tests)
        self.tap: Tap | None = None
        self._used: OrderedDict[bytes, float] = OrderedDict()

    @property
    def forwarded_bytes(self) -> int:
        return self.budget.forwarded_bytes

    def adopt(self, transport: asyncio.Transport) -> RelayLink:
        """A connection that started with the magic; feed it its bytes from now on."""
        return RelayLink(self, transport)

    # -- pairing ------------------------------------------------------------------------------

    def _on_hello(self, link: RelayLink, raw: bytes) -> None:
        try:
            hello = decode_hello(raw)
        except BadHello as exc:
            self._refuse(link, REASON_BAD_HELLO, str(exc))
            return
        now = time.monotonic()
        self._expire_used(now)
        token = hello.token
        link.role = hello.role
        if not self.config.enabled:
            self._refuse(link, REASON_DISABLED)
            return
        if hello.role == ROLE_CALLER:
            self._on_caller(link, hello, now)
            return
        found = self.waiting.pop(token, None)
        if found is None:
            if token in self.active or token in self._used:
                self._refuse(link, REASON_TOKEN_USED)
            elif self.early.hold(token, link, link.ip):
                link.state, link.token = "early", token
                link.requested_rate_bps = hello.requested_rate_bps
                link._timer = asyncio.get_running_loop().call_later(
                    self.early_callee_hold_s, self._early_timeout, link)
                link.log.info("relay_callee_early", held=len(self.early))
            else:
                self._refuse(link, REASON_UNKNOWN_TOKEN)
            return
        self._pair(found, link, hello.requested_rate_bps, now)

    def _pair(self, session: RelaySession, link: RelayLink, requested_rate_bps: int,
              now: float) -> None:
        """The callee ``link`` joins the caller waiting in ``session``."""
        token = session.token
        if session.timer is not None:
            session.timer.cancel()
        self.budget.pair(session.budget, requested_rate_bps, now)
        session.b = link
        link.session = session
        self.active[token] = session
        self.stats.paired += 1
        session.timer = asyncio.get_running_loop().call_later(
            self.config.max_session_s, session.end, DURATION_LIMIT)
        session.watch_idle()
        limits = self.limits(session)
        for side in (session.a, link):
            side.state = "paired"
            side.answer(True, limits=limits)
        session.log.info("relay_paired", callee=link.peer, rate_bps=session.budget.rate_bps,
                         sessions=len(self.active))
        self._changed()
        for side in (session.a, link):
            if not session.ended:
                side.pump()

    def _on_caller(self, link: RelayLink, hello: Hello, now: float) -> None:
        """Checks in order, each before anything is allocated for the session: the token is
        fresh, the caller's IP and /24 hold fewer sessions than their limits, the credential
        (a voucher, or a reservation by an attached client), its keys' limits, the budget."""
        token = hello.token
        if token in self.waiting or token in self.active or token in self._used:
            self._refuse(link, REASON_TOKEN_USED)
            return
        admission = self.admission
        refused = admission.address_refusal(link.ip)
        if refused is not None:
            self._refuse(link, *refused)
            return
        reservation: Reservation | None = None
        keys: tuple[bytes, ...]
        if hello.voucher is not None:
            try:
                keys = check_voucher(hello.voucher, self.node_key, token, time.time()).keys
            except VoucherRefused as exc:
                self._refuse(link, exc.reason, exc.detail)
                return
            credential = "voucher"
        else:
            reservation = admission.reservation(token_hash(token), now)
            if reservation is None:
                self._refuse(link, REASON_UNRESERVED)
                return
            keys, credential = (reservation.key,), "reservation"
        refused = admission.key_refusal(keys, reservation.key if reservation else None)
        if refused is not None:
            self._refuse(link, *refused)
            return
        try:
            rate = self.budget.admit(hello.requested_rate_bps, now, network_key(link.ip))
        except Refusal as exc:
            self._refuse(link, exc.reason)
            return
        session = RelaySession(self, token, rate, link, admission.hold(link.ip, keys, reservation))
        link.session = session
        link.log.info("relay_waiting", rate_bps=rate.rate_bps, credential=credential,
                      reserved_bps=self.budget.reserved_bps)
        early = self.early.take(token)
        if early is not None:  # its callee came first and is held: pair them now
            early._cancel_timer()
            self._pair(session, early, early.requested_rate_bps, now)
            return
        self.waiting[token] = session
        link.state = "waiting"
        session.timer = asyncio.get_running_loop().call_later(
            self.pair_timeout_s, self._pair_timeout, session)
        self._changed()

    def _early_timeout(self, link: RelayLink) -> None:
        """A held callee's caller did not come in time: ``unknown token`` (it may ask
        again)."""
        link._timer = None
        if self.early.drop(link.token, link):
            self._refuse(link, REASON_UNKNOWN_TOKEN)

    def _early_left(self, link: RelayLink) -> None:
        """A held callee closed its connection before its caller came."""
        if link.state == "early" and self.early.drop(link.token, link):
            link.log.info("relay_callee_left_early")

    def reserve(self, token_hash: bytes, key: bytes) -> str | None:
        """A client attached to this supernode (identity ``key``) reserves the session whose
        token hashes to ``token_hash``: its caller may then come with no voucher. The refusal
        reason, or None."""
        reason = self.admission.reserve(token_hash, key, time.monotonic())
        if reason is not None:
            self.stats.refused[reason] += 1
        return reason

    def limits(self, session: RelaySession) -> SessionLimits:
        """What the OK status tells both ends about ``session``."""
        return SessionLimits(self.config.max_session_bytes,
                             max(1, round(self.config.max_session_s)), session.budget.rate_bps)

    def _refuse(self, link: RelayLink, reason: str, detail: str = "") -> None:
        self.stats.refused[reason] += 1
        link.log.info("relay_refused", reason=reason, detail=detail or None)
        link.answer(False, reason)
        link.close()

    def _pair_timeout(self, session: RelaySession) -> None:
        session.timer = None
        if self.waiting.get(session.token) is not session:
            return
        del self.waiting[session.token]
        self._release(session)
        self.stats.refused[REASON_TIMEOUT] += 1
        session.a.log.info("relay_refused", reason=REASON_TIMEOUT)
        session.a.answer(False, REASON_TIMEOUT)
        session.ended = True
        session.a.close()
        self._changed()

    def _abandon(self, link: RelayLink, reason: str) -> None:
        session = link.session
        if session is None or self.waiting.get(session.token) is not session:
            return
        del self.waiting[session.token]
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        session.ended = True
        self._release(session)
        link.log.info("relay_abandoned", reason=reason)
        link.close()
        self._changed()

    def _ended(self, session: RelaySession, reason: str) -> None:
        if self.active.get(session.token) is session:
            del self.active[session.token]
        self.waiting.pop(session.token, None)
        self._release(session)
        self._used[session.token] = time.monotonic()
        while len(self._used) > USED_TOKENS_MAX:
            self._used.popitem(last=False)
        self.stats.ended[reason] += 1
        paired_at = session.budget.paired_at
        emit = session.log.info if reason == "closed" else session.log.warning
        emit("relay_session_ended", reason=reason, bytes=session.budget.bytes,
             seconds=round(time.monotonic() - paired_at, 3) if paired_at else None,
             callee=session.b.peer if session.b else None)
        self._changed()

    def _release(self, session: RelaySession) -> None:
        self.admission.release(session.holding)
        self.budget.release(session.budget)

    def _expire_used(self, now: float) -> None:
        while self._used:
            token, at = next(iter(self._used.items()))
            if now - at < USED_TOKEN_TTL_S:
                break
            del self._used[token]

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("relay_on_change_failed")

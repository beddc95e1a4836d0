"""Signalling: an attached client's signed offer, routed to the supernode(s) the receiver is
attached to, and delivered only past :mod:`~overlay.node.signal_gate`'s checks.

The sender's supernode takes signals only from clients attached to it, with the sender's
user, device and key from the session (never from the message), and only payloads that are
offers signed by the session's key. For each of the receiver's online devices it delivers the
signal itself (the receiver is attached here) or forwards it in one DHT request, method
``signal``, to the supernode the presence record names; on the wire that request's arguments
are ``[from_user, from_device, from_key, to_user, to_device, payload]``
(:class:`ForwardedSignal`) and the answer is ``{"ok": bool, "reason": str}``. A receiving
supernode answers ``checking`` while it looks the sender up, holds the signal and delivers it
as soon as the lookup completes and the gate passes it (:mod:`~overlay.node.held_signals`);
the sender asks again a few times, and is answered ``ok`` once it was delivered. Where the
receiver is found comes from the supernode's shared name lookups
(:mod:`~overlay.node.name_lookups`: the caller's own lookup a moment before, usually).
Supernodes never read the payload beyond its outer signature.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict

from overlay.attach import Signal, SignalResult
from overlay.core import records
from overlay.core.identity import node_id_for
from overlay.core.logs import get_logger
from overlay.core.offers import signed_by
from overlay.core.tasks import TaskSet
from overlay.dht import DHTNode
from overlay.node.admission import Admission
from overlay.node.errors import BadSignal
from overlay.node.forwarded_signal import ForwardedSignal
from overlay.node.held_signals import Held, HeldSignals
from overlay.node.name_lookups import NameLookups, online_presence
from overlay.node.signal_gate import Refusal, SignalGate, SignalStats
from overlay.node.supernode_options import SignalLimits
from overlay.node.tcp_service import ServedSession, TcpService

__all__ = ["ForwardedSignal", "SignalForwarder"]

log = get_logger(__name__)

#: supernodes the gate learns per directory read (every holder answers at most 48)
MAX_DIRECTORY_READ = 4096
#: the source IP of the latest forwarders, whose directory shards a read may need
MAX_SENDER_HOSTS = 256

#: signals travel between supernodes in one DHT datagram (requests are capped at 4 KiB)
SIGNAL_FORWARD_MAX = 3072
#: a request that gets no answer is sent again this many times in all
SIGNAL_FORWARD_TRIES = 3
#: pauses before asking again while the receiving supernode answers "checking" (it holds
#: the signal and delivers it as soon as it is decided: asking again only learns the outcome)
CHECKING_RETRY_S = (0.1, 0.25, 0.5, 1.0, 2.0)
UNANSWERED = "the user's supernode did not answer"
#: failures that say a remembered presence is stale (the device is not where it said)
MOVED = frozenset({Refusal.NOT_ATTACHED.value, UNANSWERED})
#: the directory is read again this soon after start, then twice as late each time
DIRECTORY_FIRST_PAUSE_S = 2.0
#: how long a signal waits for the gate's lookups before it is answered "checking" for good
HOLD_S = sum(CHECKING_RETRY_S)


class SignalForwarder:
    def __init__(
        self, own_key: bytes, dht: DHTNode, tcp: TcpService, admission: Admission,
        limits: SignalLimits | None = None,
    ) -> None:
        self.own_key = own_key
        self.dht = dht
        self.tcp = tcp
        self.names: NameLookups = tcp.names
        self.admission = admission
        self.gate = SignalGate(limits or SignalLimits())
        self.held = HeldSignals()
        self._sender_hosts: OrderedDict[bytes, str] = OrderedDict()
        self._tasks = TaskSet()
        #: set (and replaced) whenever the gate learns something: waiting checks look again
        self._learned = asyncio.Event()

    @property
    def stats(self) -> SignalStats:
        return self.gate.stats

    def stop(self) -> None:
        self._tasks.cancel_all()

    # -- sending: a client attached here -----------------------------------------------------

    async def forward(self, session: ServedSession, msg: Signal) -> None:
        """Route an attached client's signal to ``msg.to_user``'s supernode(s) and answer
        with a ``SignalResult`` (ok when at least one device got it)."""
        result = session.result
        if session.attached is None or result is None or result.lookup_only:
            self.tcp.cut_off(session, "signalling needs an attached session", "not_attached")
            return
        if len(msg.payload) > SIGNAL_FORWARD_MAX:
            session.proto.send(SignalResult(msg.request_id, False,
                                            f"signal payload over {SIGNAL_FORWARD_MAX} bytes"))
            return
        if not signed_by(msg.payload, result.client_key):
            self.gate.refuse(Refusal.BAD_INVITE)
            session.proto.send(SignalResult(msg.request_id, False, Refusal.BAD_INVITE.value))
            return
        started = time.monotonic()
        # who sent it is the session's, as the handshake proved it; the message names no sender
        outgoing = ForwardedSignal(
            from_user=result.user, from_device=result.device,
            from_key=result.client_key, to_user=msg.to_user, to_device="",
            payload=msg.payload,
        )
        # where the receiver is attached: as a lookup a moment ago found it (the caller's
        # own, usually), else asked now; when that fails it may be stale (the device moved):
        # then as the network says now
        kept = self.names.cached(msg.to_user)
        remembered = online_presence(kept, time.time()) if kept is not None else []
        targets = remembered or await self._presence(msg.to_user)
        looked_up = time.monotonic()
        delivered, errors, moved = await self._deliver(msg, targets, outgoing)
        if not delivered and remembered and moved:
            self.names.forget(msg.to_user)
            delivered, errors, _ = await self._deliver(
                msg, await self._presence(msg.to_user), outgoing)
        log.info("signal_forwarded", to_user=msg.to_user, ok=delivered > 0,
                 from_memory=bool(remembered), lookup_s=round(looked_up - started, 4),
                 total_s=round(time.monotonic() - started, 4))
        session.proto.send(SignalResult(msg.request_id, delivered > 0,
                                        "; ".join(errors)[:200]))

    async def _presence(self, user: str) -> list[records.PresenceRecord]:
        now = time.time()
        return [s.record for s in await self.dht.get(records.user_key(user))
                if isinstance(s.record, records.PresenceRecord) and s.record.online
                and s.record.expires_at > now]

    async def _deliver(self, msg: Signal, targets: list[records.PresenceRecord],
                       outgoing: ForwardedSignal) -> tuple[int, list[str], bool]:
        """Deliver to each of ``targets`` that ``msg`` is for, here or at its supernode, all
        at once: (delivered, errors, whether every failure says the device is not there)."""
        targets = [r for r in targets if not msg.to_device or r.device == msg.to_device]
        if not targets:
            return 0, [f"{msg.to_user} is offline or unknown"], True

        async def one(rec: records.PresenceRecord) -> tuple[bool, str]:
            signal = dataclasses.replace(outgoing, to_device=rec.device)
            if rec.supernode_key == self.own_key:
                return await self._deliver_local(signal)
            ok, reason = await self._send(rec, signal)
            self.stats.forwarded += ok
            return ok, reason

        outcomes = await asyncio.gather(*(one(rec) for rec in targets))
        errors = [f"{rec.device}: {reason}"
                  for rec, (ok, reason) in zip(targets, outcomes, strict=True) if not ok]
        moved = all(ok or reason in MOVED for ok, reason in outcomes)
        return sum(ok for ok, _ in outcomes), errors, moved

    async def _deliver_local(self, signal: ForwardedSignal) -> tuple[bool, str]:
        """Both ends attached here: the same checks but the directory's, waiting for
        lookups the way a forwarding supernode would."""
        reason = await self._decided(signal, None, self._check(signal, None))
        if reason is not None:
            return False, reason.value
        return self._hand_over(signal)

    async def _send(
        self, rec: records.PresenceRecord, signal: ForwardedSignal
    ) -> tuple[bool, str]:
        """One UDP request to the user's supernode, sent again when lost (a repeated delivery
        is harmless: receivers drop a session id they already have) or answered "checking"."""
        waits = iter(CHECKING_RETRY_S)
        unanswered = 0
        while True:
            try:
                reply = await self.dht.call((rec.supernode_host, rec.supernode_port), "signal",
                                            *signal.to_args(),
                                            node_id=node_id_for(rec.supernode_key))
            except TimeoutError:
                unanswered += 1
                if unanswered >= SIGNAL_FORWARD_TRIES:
                    return False, UNANSWERED
                continue
            if not isinstance(reply, dict):
                return False, "the user's supernode answered off the schema"
            if reply.get("ok") is True:
                return True, ""
            reason = str(reply.get("reason", reply.get("error", "")))[:100]
            delay = next(waits, None) if reason == Refusal.CHECKING.value else None
            if delay is None:
                return False, reason
            await asyncio.sleep(delay)

    # -- receiving: DHT method "signal" ------------------------------------------------------

    def answer_signal(
        self, addr: tuple[str, int], sender_key: bytes, args: list[object]
    ) -> object:
        """DHT method "signal": another supernode forwards a signal to a client attached
        here. Answered at once: what needs a lookup is answered "checking" (ask again), and
        the signal is held and delivered once the lookup lets the gate pass it."""
        try:
            signal = ForwardedSignal.from_args(args)
        except BadSignal:
            self.gate.refuse(Refusal.MALFORMED)
            raise
        # the forwarder's shard is its network's (overlay.core.directory_keys)
        self._sender_hosts.pop(sender_key, None)
        self._sender_hosts[sender_key] = addr[0]
        while len(self._sender_hosts) > MAX_SENDER_HOSTS:
            self._sender_hosts.popitem(last=False)
        digest = signal.digest()
        held = self.held.state(sender_key, digest, time.monotonic())
        if held is Held.DELIVERED:
            return {"ok": True, "reason": ""}
        if held is Held.PENDING:
            return {"ok": False, "reason": Refusal.CHECKING.value}
        reason = self._check(signal, sender_key)
        if reason is Refusal.CHECKING and self.held.hold(sender_key, digest):
            self._tasks.spawn(self._hold(signal, sender_key, digest))
        if reason is not None:
            return {"ok": False, "reason": reason.value}
        ok, why = self._hand_over(signal)
        return {"ok": ok, "reason": why}

    async def _hold(self, signal: ForwardedSignal, forwarder: bytes, digest: bytes) -> None:
        """Deliver a held signal once the gate passes it (or forget it)."""
        started = time.monotonic()
        waiting_for = "directory" if self.gate.owner_known(signal.from_user, time.time()) \
            else "owner"
        ok = False
        try:
            reason = await self._decided(signal, forwarder, Refusal.CHECKING)
            if reason is None:
                ok, _ = self._hand_over(signal)
            log.info("signal_held", from_user=signal.from_user, to_user=signal.to_user,
                     delivered=ok, reason=reason.value if reason is not None else "",
                     waited_for=waiting_for, held_s=round(time.monotonic() - started, 4))
        finally:
            self.held.release(forwarder, digest, ok, time.monotonic())

    def _check(self, signal: ForwardedSignal, forwarder: bytes | None) -> Refusal | None:
        """The gate's verdict now, with what the name lookups already know of the sender;
        starts the lookups it asks for."""
        now = time.time()
        if not self.gate.owner_known(signal.from_user, now):
            kept = self.names.cached(signal.from_user)
            if kept is not None:
                self.gate.learn_owner(signal.from_user, kept.owner.key, now)
        reason = self.gate.check(signal, now, forwarder)
        self._start_lookups()  # what the gate wants to know (a stale directory, an owner)
        return reason

    async def _decided(self, signal: ForwardedSignal, forwarder: bytes | None,
                       reason: Refusal | None) -> Refusal | None:
        """``reason`` (the first check's), or while it is "checking", the check again each
        time the gate learns something, for up to :data:`HOLD_S` (no polling)."""
        deadline = time.monotonic() + HOLD_S
        while reason is Refusal.CHECKING:
            learned = self._learned
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await learned.wait()
            except TimeoutError:
                break
            reason = self._check(signal, forwarder)
        return reason

    def _wake(self) -> None:
        """The gate learned something (or a lookup failed): waiting checks look again."""
        self._learned.set()
        self._learned = asyncio.Event()

    def _hand_over(self, signal: ForwardedSignal) -> tuple[bool, str]:
        """Give ``signal`` to the receiving device if it is attached here."""
        target = self.admission.session_of(signal.to_user, signal.to_device)
        if target is None or target.proto.conn is None or target.proto.conn.closed:
            self.gate.refuse(Refusal.NOT_ATTACHED)
            return False, Refusal.NOT_ATTACHED.value
        target.proto.send(signal.delivery())
        self.stats.delivered += 1
        return True, ""

    # -- lookups the gate asked for ------------------------------------------------------------

    async def keep_directory(self) -> None:
        """Read the supernode directory at start and again before the gate's copy is due for
        a re-read, so that a signal from a listed supernode is never held for a directory
        read (a supernode listed since the last read still is)."""
        pause = DIRECTORY_FIRST_PAUSE_S
        while True:
            try:
                found = await self.dht.supernodes(limit=MAX_DIRECTORY_READ,
                                                  of=self._wanted_hosts())
            except Exception as exc:  # as below: the next read, or a signal's, tries again
                log.warning("signal_directory_unread", error=str(exc))
            else:
                self.gate.learn_directory((s.record for s in found), time.time())
                self._wake()
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.9 * self.gate.limits.directory_ttl_s)

    def _start_lookups(self) -> None:
        if self.gate.directory_due():
            self._tasks.spawn(self._read_directory(self.gate.directory_delay()))
        for name in self.gate.owners_due():
            self._tasks.spawn(self._look_up_owner(name))

    def _wanted_hosts(self) -> list[str]:
        """The source addresses of the forwarders the gate misses (their shards are read)."""
        return [self._sender_hosts[k] for k in self.gate.directory_wanted()
                if k in self._sender_hosts]

    async def _read_directory(self, delay: float = 0.0) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            found = await self.dht.supernodes(limit=MAX_DIRECTORY_READ, of=self._wanted_hosts())
        except Exception as exc:  # a failed read only delays the answer; never kills the node
            log.warning("signal_directory_unread", error=str(exc))
            self.gate.directory_failed()
        else:
            self.gate.learn_directory((s.record for s in found), time.time())
        self._wake()

    async def _look_up_owner(self, name: str) -> None:
        try:
            found = await self.names.lookup(name)
        except Exception as exc:  # as above: the sender asks again
            log.warning("signal_owner_unknown", user=name, error=str(exc))
            self.gate.owner_failed(name)
        else:
            self.gate.learn_owner(name, found.owner.key, time.time())
        self._wake()

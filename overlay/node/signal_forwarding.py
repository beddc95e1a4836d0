"""Signalling: an attached client's signed offer, routed to the supernode(s) the receiver is
attached to, and delivered only past :mod:`~overlay.node.signal_gate`'s checks.

The sender's supernode takes signals only from clients attached to it, with the sender's
user, device and key from the session (never from the message), and only payloads that are
offers signed by the session's key. For each of the receiver's online devices it delivers the
signal itself (the receiver is attached here) or forwards it in one DHT request, method
``signal``, to the supernode the presence record names; on the wire that request's arguments
are ``[from_user, from_device, from_key, to_user, to_device, payload]``
(:class:`ForwardedSignal`) and the answer is ``{"ok": bool, "reason": str}``. A receiving
supernode answers ``checking`` while it looks the sender up; the sender asks again a few
times. Supernodes never read the payload beyond its outer signature.
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
from overlay.dht.names import name_owner
from overlay.node.admission import Admission
from overlay.node.errors import BadSignal
from overlay.node.forwarded_signal import ForwardedSignal
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
#: pauses before asking again while the receiving supernode answers "checking"
CHECKING_RETRY_S = (0.1, 0.25, 0.5, 1.0, 2.0)


class SignalForwarder:
    def __init__(
        self, own_key: bytes, dht: DHTNode, tcp: TcpService, admission: Admission,
        limits: SignalLimits | None = None,
    ) -> None:
        self.own_key = own_key
        self.dht = dht
        self.tcp = tcp
        self.admission = admission
        self.gate = SignalGate(limits or SignalLimits())
        self._sender_hosts: OrderedDict[bytes, str] = OrderedDict()
        self._tasks = TaskSet()

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
        now = time.time()
        targets = [
            s.record for s in await self.dht.get(records.user_key(msg.to_user))
            if isinstance(s.record, records.PresenceRecord) and s.record.online
            and s.record.expires_at > now
            and (not msg.to_device or s.record.device == msg.to_device)
        ]
        if not targets:
            session.proto.send(SignalResult(msg.request_id, False,
                                            f"{msg.to_user} is offline or unknown"))
            return
        # who sent it is the session's, as the handshake proved it; the message names no sender
        outgoing = ForwardedSignal(
            from_user=result.user, from_device=result.device,
            from_key=result.client_key, to_user=msg.to_user, to_device="",
            payload=msg.payload,
        )
        delivered, errors = 0, []
        for rec in targets:
            signal = dataclasses.replace(outgoing, to_device=rec.device)
            if rec.supernode_key == self.own_key:
                ok, reason = await self._deliver_local(signal)
            else:
                ok, reason = await self._send(rec, signal)
                self.stats.forwarded += ok
            delivered += ok
            if not ok:
                errors.append(f"{rec.device}: {reason}")
        session.proto.send(SignalResult(msg.request_id, delivered > 0,
                                        "; ".join(errors)[:200]))

    async def _deliver_local(self, signal: ForwardedSignal) -> tuple[bool, str]:
        """Both ends attached here: the same checks but the directory's, waiting for
        lookups the way a forwarding supernode would."""
        waits = iter(CHECKING_RETRY_S)
        while True:
            reason = self.gate.check(signal, time.time(), forwarder=None)
            self._start_lookups()
            if reason is not Refusal.CHECKING:
                break
            delay = next(waits, None)
            if delay is None:
                break
            await asyncio.sleep(delay)
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
                    return False, "the user's supernode did not answer"
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
        here. Answered at once: what needs a lookup is answered "checking" (ask again)."""
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
        reason = self.gate.check(signal, time.time(), forwarder=sender_key)
        self._start_lookups()  # what the gate wants to know (a stale directory, an owner)
        if reason is not None:
            return {"ok": False, "reason": reason.value}
        ok, why = self._hand_over(signal)
        return {"ok": ok, "reason": why}

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

    def _start_lookups(self) -> None:
        if self.gate.directory_due():
            self._tasks.spawn(self._read_directory())
        for name in self.gate.owners_due():
            self._tasks.spawn(self._look_up_owner(name))

    async def _read_directory(self) -> None:
        try:
            wanted = [self._sender_hosts[k] for k in self.gate.directory_wanted()
                      if k in self._sender_hosts]
            found = await self.dht.supernodes(limit=MAX_DIRECTORY_READ, of=wanted)
        except Exception as exc:  # a failed read only delays the answer; never kills the node
            log.warning("signal_directory_unread", error=str(exc))
            self.gate.directory_failed()
            return
        self.gate.learn_directory((s.record for s in found), time.time())

    async def _look_up_owner(self, name: str) -> None:
        try:
            owner = await name_owner(self.dht, name)
        except Exception as exc:  # as above: the sender asks again
            log.warning("signal_owner_unknown", user=name, error=str(exc))
            self.gate.owner_failed(name)
            return
        self.gate.learn_owner(name, owner.key, time.time())

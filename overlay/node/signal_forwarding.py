"""Signalling: an attached client's opaque, end-to-end signed signal, routed to the
supernode(s) the receiver is attached to.

The sender's supernode finds the receiver's online presence records and, for each device,
delivers the signal itself (the receiver is attached here) or forwards it in one DHT request,
method ``signal``, to the supernode the record names. On the wire that request's arguments are
``[from_user, from_device, from_key, to_user, to_device, payload]`` (see docs/ARCHITECTURE.md);
:class:`ForwardedSignal` is that list, parsed once. Supernodes never read the payload: the
receiver checks its signature against the sender's own presence records.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TypeVar

from overlay.attach import Signal, SignalDelivery, SignalResult
from overlay.core import records
from overlay.core.identity import node_id_for
from overlay.dht import DHTNode
from overlay.node.admission import Admission
from overlay.node.errors import BadSignal
from overlay.node.tcp_service import ServedSession, TcpService

#: signals travel between supernodes in one DHT datagram (requests are capped at 4 KiB)
SIGNAL_FORWARD_MAX = 3072
SIGNAL_FORWARD_TRIES = 3

_SCHEMA = "signal takes from_user, from_device, from_key, to_user, to_device, payload"

_T = TypeVar("_T")


def _exactly(kind: type[_T], value: object) -> _T:
    """``value`` if its type is exactly ``kind`` (no subclasses: msgpack gives exact types)."""
    if type(value) is not kind:
        raise BadSignal(_SCHEMA)
    return value


@dataclass(frozen=True)
class ForwardedSignal:
    """The arguments of the DHT method ``signal``: who sent it, to whom, and the payload."""

    from_user: str
    from_device: str
    #: the sender's identity key, as its supernode saw it in the session's handshake
    from_key: bytes
    to_user: str
    to_device: str
    payload: bytes

    @classmethod
    def from_args(cls, args: list[object]) -> ForwardedSignal:
        """Parse the request's argument list; raises :class:`BadSignal` (a ``ValueError``)."""
        if len(args) != 6:
            raise BadSignal(_SCHEMA)
        signal = cls(
            from_user=_exactly(str, args[0]),
            from_device=_exactly(str, args[1]),
            from_key=_exactly(bytes, args[2]),
            to_user=_exactly(str, args[3]),
            to_device=_exactly(str, args[4]),
            payload=_exactly(bytes, args[5]),
        )
        try:
            signal.delivery()
        except Exception as exc:
            raise BadSignal(f"bad signal: {exc}") from None
        return signal

    def to_args(self) -> list[object]:
        """The request's argument list, in wire order."""
        return [self.from_user, self.from_device, self.from_key, self.to_user,
                self.to_device, self.payload]

    def delivery(self) -> SignalDelivery:
        """The message the receiving client gets (checks the sender's fields and payload)."""
        return SignalDelivery(self.from_user, self.from_device, self.from_key, self.payload)


class SignalForwarder:
    def __init__(
        self, own_key: bytes, dht: DHTNode, tcp: TcpService, admission: Admission
    ) -> None:
        self.own_key = own_key
        self.dht = dht
        self.tcp = tcp
        self.admission = admission

    async def forward(self, session: ServedSession, msg: Signal) -> None:
        """Route an attached client's signal to ``msg.to_user``'s supernode(s) and answer
        with a ``SignalResult`` (ok when at least one device got it)."""
        assert session.result is not None
        if session.attached is None:
            self.tcp.cut_off(session, "signalling needs an attached session", "not_attached")
            return
        if len(msg.payload) > SIGNAL_FORWARD_MAX:
            session.proto.send(SignalResult(msg.request_id, False,
                                            f"signal payload over {SIGNAL_FORWARD_MAX} bytes"))
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
        outgoing = ForwardedSignal(
            from_user=session.result.user, from_device=session.result.device,
            from_key=session.result.client_key, to_user=msg.to_user, to_device="",
            payload=msg.payload,
        )
        delivered, errors = 0, []
        for rec in targets:
            signal = dataclasses.replace(outgoing, to_device=rec.device)
            if rec.supernode_key == self.own_key:
                ok, reason = self.deliver(signal)
            else:
                ok, reason = await self._send(rec, signal)
            delivered += ok
            if not ok:
                errors.append(f"{rec.device}: {reason}")
        session.proto.send(SignalResult(msg.request_id, delivered > 0,
                                        "; ".join(errors)[:200]))

    async def _send(
        self, rec: records.PresenceRecord, signal: ForwardedSignal
    ) -> tuple[bool, str]:
        """One UDP request to the user's supernode, retried: a datagram may be lost, and a
        repeated delivery is harmless (receivers drop a session id they already have)."""
        for _ in range(SIGNAL_FORWARD_TRIES):
            try:
                reply = await self.dht.call((rec.supernode_host, rec.supernode_port), "signal",
                                            *signal.to_args(),
                                            node_id=node_id_for(rec.supernode_key))
            except TimeoutError:
                continue
            ok = isinstance(reply, dict) and reply.get("ok") is True
            return ok, str(reply.get("reason", "")) if isinstance(reply, dict) else ""
        return False, "the user's supernode did not answer"

    def deliver(self, signal: ForwardedSignal) -> tuple[bool, str]:
        """Hand ``signal`` to the receiving device if it is attached here."""
        target = self.admission.session_of(signal.to_user, signal.to_device)
        if target is None or target.proto.conn is None or target.proto.conn.closed:
            return False, f"{signal.to_user}/{signal.to_device} is not attached here"
        target.proto.send(signal.delivery())
        return True, ""

    def answer_signal(
        self, addr: tuple[str, int], sender_key: bytes, args: list[object]
    ) -> object:
        """DHT method "signal": another supernode forwards a signal to a client attached here."""
        ok, reason = self.deliver(ForwardedSignal.from_args(args))
        return {"ok": ok, "reason": reason}

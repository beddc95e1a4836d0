"""Admission: which clients a supernode takes, and their presence records while attached.

A supernode admits clients up to ``max_clients`` (then refuses with alternatives), checks
each ``Attach``'s signed presence record (it must name this supernode's address, and a name
attached with another key is refused), publishes the record to the DHT and keeps it published
while the client is attached; a ``Detach`` stores the client's signed offline record. A newer
session of the same user/device with the same key replaces the older one.

A session's first ``Attach`` is refused when the name's holders decide it belongs to another
key (:func:`overlay.dht.names.name_owner`: their majority), so an impostor's own supernode
does not publish for it even where no node it reaches holds the name. The ``Attach``'s name
claim is published too (when it changed, at the same time as the presence record), and
outlives the session in the DHT.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from overlay.attach import Attach, AttachOk, Detach, Refused, RefuseReason
from overlay.attach.errors import AttachRejected
from overlay.attach.verification import verify_attach, verify_attach_claim
from overlay.core import records
from overlay.core.logs import get_logger
from overlay.dht import DHTNode, PutFailed
from overlay.dht.names import name_owner
from overlay.node.tcp_service import ServedSession, TcpService

log = get_logger(__name__)


class Admission:
    """The attached clients by (user, device), and why others were refused."""

    def __init__(
        self,
        own_key: bytes,
        dht: DHTNode,
        tcp: TcpService,
        *,
        max_clients: int,
        advertised: Callable[[], tuple[str, int]],
        stopping: asyncio.Event,
    ) -> None:
        self.own_key = own_key
        self.dht = dht
        self.tcp = tcp
        self.max_clients = max_clients
        self.advertised = advertised
        self.stopping = stopping
        self.attached: dict[tuple[str, str], ServedSession] = {}
        #: attachments refused, by metric label
        self.refused: Counter[str] = Counter()

    def accepting(self) -> bool:
        return len(self.attached) < self.max_clients and not self.stopping.is_set()

    def load_permille(self) -> int:
        return min(1000, len(self.attached) * 1000 // max(1, self.max_clients))

    def session_of(self, user: str, device: str) -> ServedSession | None:
        return self.attached.get((user, device))

    async def _refuse(
        self, session: ServedSession, code: RefuseReason, message: str, label: str
    ) -> None:
        self.refused[label] += 1
        alternatives = await self.tcp.alternatives(exclude=self.own_key)
        session.proto.send(Refused(int(code), message, alternatives))
        self.tcp.cut_off(session, message, label, expected=code is RefuseReason.FULL)

    async def on_attach(self, session: ServedSession, msg: Attach) -> None:
        assert session.result is not None
        try:
            signed = verify_attach(msg, session.result)
            claim = verify_attach_claim(msg, session.result)
        except AttachRejected as exc:
            await self._refuse(session, RefuseReason.BAD_RECORD, str(exc), "bad_record")
            return
        rec = signed.record
        assert isinstance(rec, records.PresenceRecord)
        slot = (rec.user, rec.device)
        if (rec.supernode_host, rec.supernode_port) != self.advertised():
            await self._refuse(session, RefuseReason.BAD_RECORD,
                               "presence record names another address for this supernode",
                               "bad_record")
            return
        first = session.attached is None
        if first:
            other = self.attached.get(slot)
            if other is not None and other is not session:
                assert other.result is not None
                if other.result.client_key != session.result.client_key:
                    await self._refuse(session, RefuseReason.NOT_ALLOWED,
                                       f"{rec.user}/{rec.device} is attached with another key",
                                       "name_claimed")
                    return
                self.tcp.cut_off(other, "replaced by a newer session", "replaced")
            elif not self.accepting():
                await self._refuse(session, RefuseReason.FULL,
                                   f"full ({len(self.attached)} clients); try another supernode",
                                   "full")
                return
            owner = await name_owner(self.dht, rec.user)
            if owner.key is not None and owner.key != rec.user_key:
                await self._refuse(session, RefuseReason.NOT_ALLOWED,
                                   f"the name {rec.user!r} is held by another key",
                                   "name_claimed")
                return
        try:
            await self._publish(session, signed, claim)
        except PutFailed as exc:
            if exc.result.refused["name_claimed"]:
                await self._refuse(session, RefuseReason.NOT_ALLOWED,
                                   f"the name {rec.user!r} is held by another key",
                                   "name_claimed")
            else:
                await self._refuse(session, RefuseReason.BAD_RECORD,
                                   f"presence record not stored: {exc}", "not_stored")
            return
        if session.attached is not None:
            self.dht.forget_published(session.attached)
        session.attached = signed
        self.attached[slot] = session
        if first:
            heartbeat_s = self.tcp.limits.session.heartbeat_interval_s
            session.proto.send(AttachOk(session.proto.peer[0], session.proto.peer[1],
                                        max(1, round(heartbeat_s))))
            session.bind(log).info("client_attached", clients=len(self.attached))

    async def _publish(
        self, session: ServedSession, signed: records.SignedRecord,
        claim: records.SignedRecord | None,
    ) -> None:
        """Store the presence record and, when it changed, the session's name claim. Both
        live under the name's key and neither needs the other stored first, so the two
        publishes run at once: an ``Attach`` (a failover's above all) waits for one DHT
        publish, not two. When either fails the presence record is not kept published, and
        a ``name_claimed`` refusal is the failure reported."""
        if claim is None or (session.claim is not None and session.claim.wire == claim.wire):
            await self.dht.put(signed)
            return
        claimed, stored = await asyncio.gather(
            self._publish_claim(session, claim), self.dht.put(signed), return_exceptions=True)
        failures = [r for r in (claimed, stored) if isinstance(r, BaseException)]
        if not failures:
            return
        if not isinstance(stored, BaseException):
            self.dht.forget_published(signed)
        refusals = [f for f in failures
                    if isinstance(f, PutFailed) and f.result.refused["name_claimed"]]
        raise (refusals or failures)[0]

    async def _publish_claim(self, session: ServedSession, claim: records.SignedRecord) -> None:
        """Publish the session's name claim; a claim refused only as stale (another device
        of the user published a newer one) is no reason to refuse the attachment."""
        try:
            await self.dht.put(claim)
        except PutFailed as exc:
            if exc.result.refused["name_claimed"] or not exc.result.refused["stale_sequence"]:
                raise
            session.bind(log).info("name_claim_superseded")
        session.claim = claim

    async def on_detach(self, session: ServedSession, msg: Detach) -> None:
        assert session.result is not None
        try:
            signed = records.verify(msg.presence_record)
        except records.RecordError as exc:
            self.tcp.cut_off(session, f"bad offline record: {exc}", "bad_record")
            return
        rec = signed.record
        if (
            not isinstance(rec, records.PresenceRecord)
            or rec.online
            or rec.user_key != session.result.client_key
            or (rec.user, rec.device) != (session.result.user, session.result.device)
        ):
            self.tcp.cut_off(session, "a Detach carries this session's offline record",
                             "bad_record")
            return
        slog = session.bind(log)
        try:
            await self.dht.put(signed)
        except PutFailed as exc:
            slog.warning("offline_record_not_stored", error=str(exc))
        self.dht.forget_published(signed)
        self.forget(session)
        slog.info("client_detached")
        session.proto.close("detached")

    def on_closed(self, session: ServedSession) -> None:
        if session.attached is not None:
            session.bind(log).info("client_gone", reason=session.proto.close_reason)
        self.forget(session)

    def forget(self, session: ServedSession) -> None:
        """The session no longer holds its slot (detached, gone, or replaced)."""
        if session.attached is None:
            return
        rec = session.attached.record
        assert isinstance(rec, records.PresenceRecord)
        if self.attached.get((rec.user, rec.device)) is session:
            del self.attached[(rec.user, rec.device)]
        # stop republishing; the record expires on its own within a few refresh periods
        self.dht.forget_published(session.attached)
        session.attached = None
        if session.claim is not None:
            # the claim stays at its holders (and is handed over) until it expires
            self.dht.forget_published(session.claim)
            session.claim = None

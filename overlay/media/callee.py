"""The callee's side: invites and answers delivered to us, answering an invite, and receiving
the file over the path it races (or handing a call to the client's call handler).

An invite signed by another key than the one pinned for its sender is refused (no answer).
From a contact (pinned key) it is answered at once. From anyone else it must carry the name's
only key in the caller's presence records; then the contacts port decides: answer now
(``--accept-from anyone``) or keep it as a request, answered "pending" with no address of
ours, until the user accepts (:meth:`Callee.answer_request`) or declines
(:meth:`Callee.decline_request`) it. An answered invite races the paths as the responder and
writes the file into the inbox.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from overlay.attach import SignalDelivery
from overlay.attach.adapter import SessionError
from overlay.core.logs import get_logger
from overlay.core.tasks import TaskSet
from overlay.media.attachment import AttachmentPort, ContactsPort
from overlay.media.connect import (
    NoPath,
    Timeline,
    connect_as_responder,
)
from overlay.media.consent import (
    ANSWER,
    DECLINED,
    PENDING,
    REQUEST,
    answer_without_address,
    vet_invite,
)
from overlay.media.errors import PathLost
from overlay.media.inbox_limits import InboxGuard
from overlay.media.late_paths import LateDirect
from overlay.media.path_move import Moving
from overlay.media.path_opening import (
    OpenedPath,
    close_quietly,
    late_paths,
    retrieve,
)
from overlay.media.paths import Paths
from overlay.media.relay_paths import RelayPaths
from overlay.media.relay_vouchers import callee_signatures
from overlay.media.secure_stream import InviteSalt
from overlay.media.session import MediaConfig, Session
from overlay.media.signalling import (
    CALL,
    FILE,
    Offer,
    SignallingError,
    open_offer,
    sign_offer,
    transcript_hash,
)
from overlay.media.stream import MediaStream, discard_later
from overlay.media.tcp_punch_io import EarlyPunches
from overlay.media.transfer import PartialStore, TransferError, receive_file

log = get_logger(__name__)

MAX_RECENT = 32
#: the responder keeps its direct attempts this much longer than the caller (whose window
#: starts at its SELECT, which reaches us later)
LATE_MARGIN_S = 2.0


class Callee:
    """Answers the invites delivered to one client (``config``); ``sessions`` is shared with
    :class:`~overlay.media.path_opening.PathOpener` (answers go to the caller's session)."""

    def __init__(self, config: MediaConfig, attachment: AttachmentPort, contacts: ContactsPort,
                 paths: Paths, relays: RelayPaths, sessions: dict[bytes, Session],
                 tasks: TaskSet) -> None:
        self.config = config
        self.attachment = attachment
        self.contacts = contacts
        self.paths = paths
        self.relays = relays
        self.sessions = sessions
        self._tasks = tasks
        #: recent incoming transfers (for the status): from, name, bytes, path, error...
        self.transfers: list[dict[str, Any]] = []
        self.partials = PartialStore()
        self.inbox_guard = InboxGuard(config.inbox_limits)
        #: runs an answered call over its path (set by the client; None: calls are refused)
        self.call_handler: Callable[[OpenedPath], Awaitable[None]] | None = None

    def on_signal(self, msg: SignalDelivery) -> bool:
        """Handle a delivered invite or answer; False when the payload is not ours."""
        try:
            offer = open_offer(msg.payload)
        except SignallingError as exc:
            if msg.payload[:1] in (b"\x92",):
                log.warning("offer_refused", from_user=msg.from_user, reason=str(exc))
                return True
            return False
        if offer.from_key != msg.from_key or offer.from_user != msg.from_user \
                or offer.to_user != self.config.user:
            log.warning("offer_refused", from_user=msg.from_user, reason="misdirected")
            return True
        if offer.kind == "answer":
            s = self.sessions.get(offer.session_id)
            if s is None or s.answer is None or s.answer.done():
                return True
            if not offer.accept and offer.reason == PENDING and offer.from_key == s.peer_key:
                if not s.pending.is_set():
                    log.info("answer_pending", session=offer.session_id.hex(),
                             peer=offer.from_user)
                s.pending.set()
                return True
            s.answer.set_result(offer)
            return True
        self._tasks.spawn(self._on_invite(offer))
        return True

    async def _on_invite(self, invite: Offer) -> None:
        """Answer ``invite`` now, keep it as a contact request (answered "pending", no
        address), or refuse it (no answer at all)."""
        if invite.session_id in self.sessions:
            return
        slog = log.bind(session=invite.session_id.hex(), peer=invite.from_user)
        if invite.purpose == CALL and self.call_handler is None:
            slog.info("call_refused", reason="this client takes no calls")
            return
        setup = Timeline()
        verdict = await vet_invite(self.attachment, self.contacts, invite, slog)
        setup.add("invite vetted")
        if verdict == REQUEST:
            await self._answer_without_address(invite, PENDING)
        elif verdict == ANSWER:
            await self._answer(invite, setup)

    def answer_request(self, invite: Offer) -> None:
        """The user accepted the request ``invite``: answer it (the caller may still wait)."""
        self._tasks.spawn(self._answer(invite))

    def decline_request(self, invite: Offer) -> None:
        """The user declined the request ``invite``: answer "declined", with no address."""
        self._tasks.spawn(self._answer_without_address(invite, DECLINED))

    async def _answer_without_address(self, invite: Offer, reason: str) -> None:
        """A signed answer ``accept=false`` with ``reason`` and no candidates: it tells the
        caller where its invite stands and reveals no address of ours."""
        session = self.attachment.primary_session()
        if session is None:
            return
        me = self.config
        answer = answer_without_address(me.identity, me.user, me.device, invite, reason)
        try:
            result = await session.signal(invite.from_user, answer.wire,
                                          to_device=invite.from_device)
        except SessionError as exc:
            log.info("answer_not_delivered", to_user=invite.from_user, reason=str(exc))
            return
        if not result.ok:
            log.info("answer_not_delivered", to_user=invite.from_user, reason=result.reason)

    async def _answer(self, invite: Offer, setup: Timeline | None = None) -> None:
        """Answer ``invite`` with our candidates, race the paths, receive the file.
        ``setup`` holds the steps since the invite arrived (when it is answered at once)."""
        session = self.attachment.primary_session()
        if session is None or invite.session_id in self.sessions:
            return
        slog = log.bind(session=invite.session_id.hex(), peer=invite.from_user)
        setup = setup or Timeline()
        s = Session(invite.session_id, invite.from_user, initiator=False,
                    invite_salt=InviteSalt(invite.path_salt) if invite.path_salt else None)
        self.sessions[s.session_id] = s
        entry: dict[str, Any] = {"from": invite.from_user, "started_at": time.time(),
                                 "first_byte_at": None, "done_at": None, "path": None}
        early = EarlyPunches()
        late: LateDirect | None = None
        try:
            local = await self.paths.candidates(session)
            setup.add("candidates")
            me = self.config
            sigs = callee_signatures(me.identity, invite, time.time())
            answer = sign_offer(Offer("answer", s.session_id, me.user, me.device,
                                      me.identity.public_key, invite.from_user, s.keys.public,
                                      local, time.time(),
                                      relay_expires=invite.relay_expires if sigs else 0,
                                      relay_sigs=sigs), me.identity)
            shared = s.keys.shared_secret(invite.ephemeral)
            transcript = transcript_hash(invite, answer)
            attempts = self.paths.attempts(s, local, invite.candidates, shared, transcript)
            # our relay attempts not paired yet stop once the caller holds its spare relay
            # session (it makes no more): not 8 s of "unknown token" at each relay
            peer_holds_spare = asyncio.Event()
            attempts.update(self.relays.attempts(s, invite, answer,
                                                 stop_pairing=peer_holds_spare))
            # the race runs while the answer is on its way: our dials, probes and relay half
            # start a round trip earlier; the caller selects a path only once it has the
            # answer, and nothing is received before its SELECT (which, authenticated with
            # the answer's keys, also proves the answer arrived: no need to wait for our
            # supernode's word on its delivery, which can take seconds between supernodes)
            attempts = early.start(attempts)
            # a file's caller may open its punched path with 0-RTT at once and move to TCP
            # later (it alone measured the round trip): punch at once, keep TCP running
            plan = self.paths.plan(local, invite.candidates, attempts, slog, upgrade=True,
                                   udp_first=invite.purpose == FILE)
            # the caller's window starts at its SELECT, a little after ours
            late = late_paths(invite.purpose, plan.upgrade_s + LATE_MARGIN_S, plan.from_udp)
            racing = asyncio.ensure_future(connect_as_responder(
                attempts, self.paths.securer(s, shared, transcript),
                staggers=plan.staggers, log=slog, late=late,
                peer_holds_spare=peer_holds_spare))
            delivery = asyncio.ensure_future(session.signal(
                invite.from_user, answer.wire, to_device=invite.from_device))
            try:
                await asyncio.wait([racing, delivery], return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                _abandon(racing)
                delivery.cancel()
                raise
            if delivery.done() and not racing.done():
                setup.add("answer at our supernode")
                if delivery.exception() is not None or not delivery.result().ok:
                    _abandon(racing)
                    if (error := delivery.exception()) is not None:
                        raise error
                    slog.warning("answer_not_delivered", to_user=invite.from_user,
                                 reason=delivery.result().reason)
                    return
            delivery.add_done_callback(retrieve)
            try:
                stream, timeline = await racing
            except NoPath as exc:
                self.paths.count_race(local, invite.candidates, exc.timeline, setup, slog)
                raise
            self.paths.count_race(local, invite.candidates, timeline, setup, slog)
            if invite.purpose == CALL and self.call_handler is not None:
                try:
                    await self.call_handler(OpenedPath(s, invite, answer, stream, timeline,
                                                       shared, transcript, late))
                finally:
                    await close_quietly(stream)
                return
            entry["path"] = stream.path
            entry["technique"] = self.paths.technique(timeline.selected, s, local,
                                                      invite.candidates)
            self._remember(entry)
            moving = Moving(stream, late) if late is not None and late.armed else None
            try:
                if moving is None:
                    done = await receive_file(stream, self.config.inbox, partials=self.partials,
                                              sender=invite.from_user, guard=self.inbox_guard)
                else:
                    done = await moving.receive(self.config.inbox, self.partials,
                                                invite.from_user, self.inbox_guard)
            finally:
                await close_quietly(stream)
                if moving is not None:
                    await close_quietly(moving.stream)
            if moving is not None and moving.moved_from is not None:
                self.paths.connect_stats.record_upgrade(local.nat, invite.candidates.nat,
                                                        timeline.events)
                entry.update(path=moving.stream.path, upgraded_from=moving.moved_from,
                             technique=self.paths.technique(moving.attempt, s, local,
                                                            invite.candidates))
            entry.update(name=done.name, bytes=done.bytes, sha256=done.sha256,
                         first_byte_at=done.first_byte_at, done_at=time.time())
            slog.info("file_received", from_user=invite.from_user, name=done.name,
                     bytes=done.bytes, path=entry["path"], resumed_from=done.resumed_from,
                     upgraded_from=entry.get("upgraded_from"))
        except (NoPath, TransferError, SessionError, SignallingError, PathLost) as exc:
            entry["error"] = str(exc)
            self._remember(entry)
            slog.warning("incoming_transfer_failed", from_user=invite.from_user, error=str(exc))
        finally:
            if late is not None:
                late.close()
            early.release()
            self.sessions.pop(s.session_id, None)
            self.paths.listener.forget(s.session_id)

    def _remember(self, entry: dict[str, Any]) -> None:
        if entry not in self.transfers:
            self.transfers.append(entry)
            del self.transfers[:-MAX_RECENT]


def _abandon(racing: asyncio.Future[tuple[MediaStream, Timeline]]) -> None:
    """Stop a race nobody will use; close the path it may have selected meanwhile."""
    racing.cancel()

    def closed(task: asyncio.Future[tuple[MediaStream, Timeline]]) -> None:
        if not task.cancelled() and task.exception() is None:
            discard_later(task.result()[0])

    racing.add_done_callback(closed)

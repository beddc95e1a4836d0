"""The caller's side of opening a path: look the user up (records verified), choose the key
(:class:`ContactsPort`: the pinned one, the one a ``NAME#KEYPREFIX`` selects, or the name's
only key; never one of several), sign an invite with a fresh X25519 key and our candidates,
signal it through our supernode, wait for the signed answer (whose key must be the chosen
key), then race the paths as the initiator. An answer ``accept=false, reason="pending"``
without candidates says the callee keeps our invite as a contact request: the caller keeps
waiting for the real answer with the same session id, up to ``accept_wait_s``, then fails
with :class:`NotAccepted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from overlay.attach.adapter import SessionError
from overlay.core.logs import get_logger
from overlay.core.tasks import TaskSet
from overlay.core.user_ref import UserRef
from overlay.media import call_relays
from overlay.media.attachment import AttachmentPort, ContactsPort
from overlay.media.connect import NoPath, Timeline, connect_as_initiator
from overlay.media.consent import (
    DECLINED,
    NotAccepted,
    SendFailed,
    await_answer,
    choose_target,
)
from overlay.media.late_paths import LateDirect
from overlay.media.paths import Paths
from overlay.media.quic.core import ZERO_RTT_CAPABILITY
from overlay.media.relay_paths import RELAY_RATE_BPS, RelayPaths
from overlay.media.relay_preconnect import RelayPreconnect
from overlay.media.relay_vouchers import VOUCHER_MARGIN_S, caller_signatures
from overlay.media.secure_stream import InviteSalt, new_path_salt
from overlay.media.session import MediaConfig, Session
from overlay.media.signalling import (
    CALL,
    FILE,
    Offer,
    new_session_id,
    sign_offer,
    transcript_hash,
)
from overlay.media.stream import ByteStream, MediaStream
from overlay.media.tcp_listener import TCP_FIRST_CAPABILITY

log = get_logger(__name__)

#: a call's race waits up to this long after a TCP path authenticated for a direct UDP one
#: still running (lab, 80 ms RTT: UDP authenticated 0.2-0.4 s after direct TCP), so that
#: most calls start on UDP rather than move to it (no wait when no UDP attempt runs)
CALL_PREFER_UDP_S = 0.5


@dataclass(frozen=True)
class OpenedPath:
    """An answered invite's authenticated path, and what both sides derived it from."""

    session: Session
    invite: Offer
    answer: Offer
    stream: MediaStream
    timeline: Timeline
    #: the X25519 secret and the transcript hash of the signed invite and answer
    shared: bytes
    transcript: bytes
    #: the attempts that ran on after the selection: a direct path a file transfer may move
    #: to (a relay was selected); a call's later paths and spare relays
    late: LateDirect | None = None


#: the caller starts a file's 0-RTT UDP path at once, and moves to direct TCP later (UDP
#: first, upgrade to TCP: :func:`overlay.media.direct_paths.plan`), when its invite took at
#: least this long to be answered: a direct TCP path then takes about as long as TCP's head
#: start (0.25 s) or longer to complete, while on a short round trip it wins within it
UDP_FIRST_MIN_ANSWER_S = 0.1


def late_paths(purpose: str, upgrade_s: float, from_udp: bool = False) -> LateDirect | None:
    """What runs on after a race for ``purpose``: a file's direct attempts for ``upgrade_s``
    (0: none; ``from_udp``: its direct TCP attempts after a direct UDP path was selected too);
    a call's direct attempts and other relays for as long as the call lasts."""
    if purpose == CALL:
        return LateDirect(None, keep_relays=True)
    return LateDirect(upgrade_s, from_udp=from_udp) if upgrade_s > 0 else None


class PathOpener:
    """Opens paths to other users for one client (``config``): ``sessions`` holds the
    sessions in progress (the callee side's too: an answer is delivered to its session)."""

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

    @contextlib.asynccontextmanager
    async def open_path(self, ref: UserRef, purpose: str, failed_relays: set[bytes],
                        accept_wait_s: float, progress: dict[str, Any] | None = None,
                        relay_rate_bps: int = RELAY_RATE_BPS, bitrate_bps: int = 0,
                        zero_rtt: bool = True) -> AsyncIterator[OpenedPath]:
        """Look ``ref`` up, invite it (``purpose``: :data:`FILE` or :data:`CALL`), wait for
        its answer, race the paths: the authenticated stream, closed on leaving the block.
        :class:`SendFailed` / :class:`NotAccepted` when there is none. ``progress`` (a
        ``sending`` entry) gets the wait's state. ``relay_rate_bps``: what a relay session
        is asked to reserve (a call's rate; 0: the relay's cap); ``bitrate_bps``: a call's
        bitrate, which the invite asks the callee to send at (0: not said). ``zero_rtt``: our
        bytes may go before the callee's confirmation (where the callee takes that): a
        file's punched UDP path opens with 0-RTT, and our dials to the callee's listener go
        caller first; False after a path was lost, so that a peer or network such a path
        fails on costs one session, not all."""
        session = self.attachment.primary_session()
        if session is None:
            raise SendFailed("not attached to a supernode yet")
        to_user = ref.name
        progress = {} if progress is None else progress
        setup = Timeline()
        # what does not depend on the callee (our candidates, the relay directory) is
        # fetched while the callee is looked up: one or two round trips fewer
        gathering = self._tasks.spawn(self.paths.candidates(session))
        listing = self._tasks.spawn(self.relays.directory(session))
        try:
            target = await choose_target(self.attachment, self.contacts, ref)
        except BaseException:
            for early in (gathering, listing):  # they finish on their own (caches)
                early.add_done_callback(retrieve)
            raise
        setup.add("looked up")
        invite_salt = InviteSalt(new_path_salt())
        s = Session(new_session_id(), to_user, initiator=True, peer_key=target.user_key,
                    invite_salt=invite_salt,
                    zero_rtt=zero_rtt and purpose == FILE
                    and ZERO_RTT_CAPABILITY in target.capabilities,
                    tcp_first=zero_rtt and TCP_FIRST_CAPABILITY in target.capabilities)
        slog = log.bind(session=s.session_id.hex(), peer=to_user)
        s.answer = asyncio.get_running_loop().create_future()
        self.sessions[s.session_id] = s
        # the callee may dial us as soon as it has answered, before its answer reaches us
        # (with the invite's path salt it confirms on connecting, see .secure_stream)
        self.paths.listener.expect(s.session_id)
        preconnect = RelayPreconnect()
        try:
            local = await gathering
            setup.add("candidates")
            directory = await listing
            relays, secret = self.relays.choose(session, directory, target, failed_relays,
                                                purpose == CALL)
            udp_ports = call_relays.udp_ports(directory, relays) if purpose == CALL else ()
            setup.add("relays ranked")
            me = self.config
            # the relay vouchers' expiry covers the whole wait for an answer and the race
            expires = int(time.time() + accept_wait_s) + VOUCHER_MARGIN_S
            sigs = caller_signatures(me.identity, relays, secret, target.user_key, expires)
            invite = sign_offer(Offer("invite", s.session_id, me.user, me.device,
                                      me.identity.public_key, to_user, s.keys.public, local,
                                      time.time(), purpose=purpose, relays=relays,
                                      relay_secret=secret,
                                      relay_expires=expires if sigs else 0, relay_sigs=sigs,
                                      relay_udp_ports=udp_ports,
                                      path_salt=invite_salt.salt, bitrate_bps=bitrate_bps),
                                me.identity)
            assert s.answer is not None
            # the answer can come before our supernode's word on the invite's delivery
            # (between supernodes that word waits for the receiving one's checks)
            invited_at = time.monotonic()
            delivery = self._tasks.spawn(
                session.signal(to_user, invite.wire, to_device=target.device))
            # the TCP handshake to the first relay while the answer comes (its hello needs
            # the callee's countersignature): a relay started at once pairs a round trip sooner
            preconnect.open(relays, self.paths.own_reflexive())
            await asyncio.wait([delivery, s.answer], return_when=asyncio.FIRST_COMPLETED)
            if delivery.done():
                try:
                    result = delivery.result()
                except SessionError as exc:
                    # our supernode went away (it may be the relay that just died): the
                    # send loop waits for the failover and tries again
                    raise SendFailed(f"{to_user} could not be signalled: {exc}") from None
                if not result.ok:
                    raise SendFailed(f"{to_user} could not be signalled: {result.reason}")
                setup.add("invite at our supernode")
            else:
                delivery.add_done_callback(retrieve)
            # we dealt with this key: pin it, and the callee becomes a contact of ours
            self.contacts.dealt_with(to_user, target.user_key)
            answer = await await_answer(s.answer, s.pending, to_user, accept_wait_s,
                                        progress, slog)
            if answer.from_key != target.user_key:
                raise SendFailed(f"the answer is not signed by {to_user}'s key")
            if not answer.accept and answer.reason == DECLINED:
                raise NotAccepted(f"{to_user} declined the contact request")
            if not answer.accept:
                raise SendFailed(f"{to_user} declined: {answer.reason}")
            setup.add("answer")
            # a long round trip to the answer (not a contact request's wait for a person):
            # the file's 0-RTT UDP path goes first, direct TCP takes over when it completes
            udp_first = s.zero_rtt and not s.pending.is_set() \
                and time.monotonic() - invited_at >= UDP_FIRST_MIN_ANSWER_S
            shared = s.keys.shared_secret(answer.ephemeral)
            transcript = transcript_hash(invite, answer)
            attempts = self.paths.attempts(s, local, answer.candidates, shared, transcript)
            attempts.update(self.relays.attempts(s, invite, answer, relay_rate_bps,
                                                 preconnect=preconnect))
            plan = self.paths.plan(local, answer.candidates, attempts, slog, upgrade=True,
                                   udp_first=udp_first)
            late = late_paths(purpose, plan.upgrade_s, plan.from_udp)
            try:
                stream, timeline = await connect_as_initiator(
                    attempts, self.paths.securer(s, shared, transcript),
                    staggers=plan.staggers, prefer_direct_s=plan.prefer_direct_s, log=slog,
                    late=late, prefer_udp_s=CALL_PREFER_UDP_S if purpose == CALL else 0.0)
            except NoPath as exc:
                self.paths.count_race(local, answer.candidates, exc.timeline, setup, slog)
                raise SendFailed(f"no path to {to_user}: {exc}") from None
            except BaseException:
                if late is not None:
                    late.close()
                raise
            self.paths.count_race(local, answer.candidates, timeline, setup, slog)
            # the relay connections opened ahead that no attempt took: not held while the
            # path carries the transfer or the call (a later relay attempt dials anew)
            preconnect.close()
            try:
                yield OpenedPath(s, invite, answer, stream, timeline, shared, transcript,
                                 late if late is not None and late.armed else None)
            finally:
                if late is not None:
                    late.close()
                await close_quietly(stream)
        finally:
            preconnect.close()
            self.sessions.pop(s.session_id, None)
            self.paths.listener.forget(s.session_id)


def retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background task's outcome as seen (nobody awaits it any more)."""
    if not task.cancelled():
        task.exception()


async def close_quietly(stream: ByteStream) -> None:
    with contextlib.suppress(Exception):
        await stream.close()

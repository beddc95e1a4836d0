"""Whom a client deals with, and consent before addresses, for the media service.

The caller's side: :func:`choose_target` looks the user up and takes the key the contacts port
chooses (pinned, selected by ``NAME#KEYPREFIX``, or the name's only key; never one of several),
and :func:`await_answer` waits for the callee's answer, longer once the callee said the invite
is a pending contact request. The callee's side: :func:`vet_invite` says whether an invite is
answered now, kept as a request, or refused; :func:`answer_without_address` builds the signed
answer ``accept=false`` with reason ``pending`` or ``declined`` and no candidates.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from structlog.typing import FilteringBoundLogger

from overlay.attach.adapter import SessionError
from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.user_ref import UserRef
from overlay.dht.names import owner_from_records
from overlay.media.attachment import Admission, AttachmentPort, ContactsPort, PeerRefused
from overlay.media.errors import MediaError
from overlay.media.signalling import Candidates, MediaKeys, Offer, sign_offer

log = get_logger(__name__)

ANSWER_TIMEOUT_S = 10.0
#: how long a caller whose invite is a pending contact request waits for the real answer
ACCEPT_WAIT_S = 120.0
#: the longest a caller may choose to wait (a callee keeps a request this long)
MAX_ACCEPT_WAIT_S = 600.0
#: the reasons of an answer without candidates: the invite is a request / was declined
PENDING = "pending"
DECLINED = "declined"

ANSWER = "answer"
REQUEST = "request"
REFUSED = "refused"


class SendFailed(MediaError):
    """A send did not happen; the message says why in a user's words."""


class Offline(SendFailed):
    """No online presence record of the user under the chosen key (offline or unknown)."""


class NotAccepted(SendFailed):
    """The callee kept our invite as a contact request and did not accept it in time, or
    declined it."""


async def choose_target(attachment: AttachmentPort, contacts: ContactsPort,
                        ref: UserRef) -> records.PresenceRecord:
    """The newest online presence record of ``ref``'s user under the key ``contacts``
    chooses; :class:`SendFailed` when there is none or the choice is refused."""
    try:
        found, _ = await attachment.lookup(ref.name)
    except SessionError as exc:
        raise SendFailed(f"lookup failed: {exc}") from None
    try:
        key = contacts.choose_key(ref, found)
    except PeerRefused as exc:
        log.warning("send_refused", to_user=ref.name, reason=str(exc))
        raise SendFailed(str(exc)) from None
    now = time.time()
    online = [s.record for s in found if isinstance(s.record, records.PresenceRecord)
              and s.record.user_key == key and s.record.online and s.record.expires_at > now]
    if key is None or not online:
        raise Offline(f"{ref} is offline or unknown")
    ignored = {s.record.signer for s in found} - {key}
    if ignored:
        log.warning("other_keys_ignored", to_user=ref.name, key=key.hex(),
                    ignored=sorted(k.hex() for k in ignored))
    return max(online, key=lambda r: r.issued_at)


async def await_answer(answer: asyncio.Future[Offer], pending: asyncio.Event, to_user: str,
                       accept_wait_s: float, progress: dict[str, Any],
                       slog: FilteringBoundLogger) -> Offer:
    """The callee's real answer: within :data:`ANSWER_TIMEOUT_S`, or, once it said the invite
    is pending (``pending`` set), within ``accept_wait_s`` of that (:class:`NotAccepted`)."""
    said_pending: asyncio.Future[Any] = asyncio.ensure_future(pending.wait())
    first: asyncio.Future[Any] = answer
    try:
        done, _ = await asyncio.wait((first, said_pending), timeout=ANSWER_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        said_pending.cancel()
    if not done:
        raise SendFailed(f"{to_user} did not answer within {ANSWER_TIMEOUT_S:.0f}s")
    if not answer.done():
        progress["state"] = "waiting for acceptance"
        slog.info("waiting_for_acceptance", to_user=to_user, wait_s=accept_wait_s)
        try:
            async with asyncio.timeout(accept_wait_s):
                await asyncio.shield(answer)
        except TimeoutError:
            raise NotAccepted(f"{to_user} has not accepted the contact request within "
                              f"{accept_wait_s:g}s") from None
    return answer.result()


async def vet_invite(attachment: AttachmentPort, contacts: ContactsPort, invite: Offer,
                     slog: FilteringBoundLogger) -> str:
    """:data:`ANSWER` (from a contact, or admitted by the policy), :data:`REQUEST` (kept as a
    contact request) or :data:`REFUSED` (logged; gets no answer at all)."""
    user = invite.from_user
    pinned = contacts.pinned(user)
    if pinned is not None:
        if pinned == invite.from_key:
            return ANSWER
        slog.warning("invite_refused", from_user=user,
                     reason=f"{user}'s key changed: pinned {pinned.hex()}, the invite is "
                            f"signed by {invite.from_key.hex()}",
                     pinned_key=pinned.hex(), offered_key=invite.from_key.hex())
        return REFUSED
    try:
        found, _ = await attachment.lookup(user)
    except SessionError as exc:
        slog.warning("invite_unverified", from_user=user, error=str(exc))
        return REFUSED
    owner = owner_from_records(user, found)
    if invite.from_key not in owner.keys:
        slog.warning("invite_refused", from_user=user,
                     reason="not signed by the key in the caller's presence records")
        return REFUSED
    if owner.conflict:
        slog.warning("invite_refused", from_user=user, reason=f"several keys claim {user}: "
                     + ", ".join(k.hex() for k in owner.keys))
        return REFUSED
    admission = contacts.admit(invite)
    if admission is Admission.ANSWER:
        return ANSWER
    if admission is Admission.DROPPED:
        return REFUSED  # logged by the contacts port
    slog.info("contact_request", from_user=user, from_device=invite.from_device,
              key=invite.from_key.hex())
    return REQUEST


def answer_without_address(identity: Identity, user: str, device: str, invite: Offer,
                           reason: str) -> Offer:
    """A signed answer ``accept=false`` with ``reason``, no candidates and a throwaway X25519
    key: it tells the caller where its invite stands and reveals no address."""
    return sign_offer(Offer("answer", invite.session_id, user, device, identity.public_key,
                            invite.from_user, MediaKeys().public, Candidates(), time.time(),
                            accept=False, reason=reason), identity)

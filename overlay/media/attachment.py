"""What the media service needs of the client's attachment to supernodes.

:class:`AttachmentPort` is the whole of it; the client daemon implements it. The media service
asks it, at the moment it needs them, for the primary session (to signal through, and to read
the supernode directory), the AttachOk of that attachment, verified lookups, the supernodes to
ask for our UDP address, whether we are reachable, and the measured RTTs that rank relays.

:class:`ContactsPort` is what it needs of the user's contacts: the key to send with, pins,
and whether an invite from a stranger is answered now or kept as a request (consent before
addresses); :class:`OpenDoor` is the port without a contacts book (no pins, anyone answered).
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from overlay.attach import AttachOk
from overlay.attach.adapter import ClientSession
from overlay.core.addresses import Address
from overlay.core.records import SignedRecord
from overlay.core.user_ref import UserRef
from overlay.media.errors import MediaError
from overlay.media.signalling import Offer


class AttachmentPort(Protocol):
    def primary_session(self) -> ClientSession | None:
        """The session to the primary supernode once it accepted the attach, else None."""

    def attach_ok(self) -> AttachOk | None:
        """The primary supernode's AttachOk (our reflexive address), when there is one."""

    async def lookup(self, user: str) -> tuple[list[SignedRecord], str]:
        """``user``'s verified presence records (newest per device) and who answered;
        raises :class:`~overlay.attach.adapter.SessionError` when no supernode could."""

    def binding_supernodes(self) -> list[tuple[Address, bytes]]:
        """Supernodes to ask for our UDP address: (address, node key), primary first."""

    def reachable(self) -> bool:
        """The supernode's dial-back succeeded: others can open TCP connections to us."""

    def relay_rtts(self) -> dict[bytes, float]:
        """Measured RTTs (s) to supernodes by node key, to rank relays."""


class PeerRefused(MediaError):
    """A user's key is not the one we pinned, or several keys claim the name and nothing says
    which one is meant; the message names the keys."""


class Admission(Enum):
    ANSWER = "answer"
    REQUEST = "request"
    DROPPED = "dropped"


class ContactsPort(Protocol):
    """Whom the media service may deal with: pinned keys (trust on first use), contacts and the
    consent policy. The client daemon implements it (:mod:`overlay.client.contacts`)."""

    def choose_key(self, ref: UserRef, found: list[SignedRecord]) -> bytes | None:
        """The key to send to ``ref.name`` with, from our pin, the ref's key prefix and the
        verified records ``found``; None when no record names the user. Raises
        :class:`PeerRefused` (the key changed, a conflict, no key matches the prefix)."""

    def pinned(self, user: str) -> bytes | None:
        """The key pinned for ``user``, if any (pinned users are the contacts)."""

    def dealt_with(self, user: str, key: bytes) -> None:
        """We sent to ``user`` under ``key``: pin it, and make ``user`` a contact."""

    def admit(self, invite: Offer) -> Admission:
        """An invite from a user we have not pinned, under the name's one key: answer it now
        (the key is pinned), keep it as a request for the user, or drop it (no room)."""


class OpenDoor:
    """No pins, anyone answered: what the media service does without a contacts book."""

    def choose_key(self, ref: UserRef, found: list[SignedRecord]) -> bytes | None:
        keys = sorted({r.record.signer for r in found if r.record.claimed_name == ref.name
                       and ref.matches(r.record.signer)})
        if len(keys) > 1:
            raise PeerRefused(f"several keys claim {ref.name}: "
                              f"{', '.join(k.hex() for k in keys)}")
        return keys[0] if keys else None

    def pinned(self, user: str) -> bytes | None:
        return None

    def dealt_with(self, user: str, key: bytes) -> None:
        pass

    def admit(self, invite: Offer) -> Admission:
        return Admission.ANSWER

"""What the media service needs of the client's attachment to supernodes.

:class:`AttachmentPort` is the whole of it; the client daemon implements it. The media service
asks it, at the moment it needs them, for the primary session (to signal through, and to read
the supernode directory), the AttachOk of that attachment, verified lookups, the supernodes to
ask for our UDP address, whether we are reachable, and the measured RTTs that rank relays.
"""

from __future__ import annotations

from typing import Protocol

from overlay.attach import AttachOk
from overlay.attach.adapter import ClientSession
from overlay.core.addresses import Address
from overlay.core.records import SignedRecord


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

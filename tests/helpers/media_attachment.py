"""The client's attachment as an in-process :class:`overlay.media.service.MediaService` sees
it (:class:`overlay.media.attachment.AttachmentPort`), for media tests that run a service
without a client daemon: attached, seen at ``reflexive``, over ``session`` when there is one,
knowing no supernodes to bind against and no relay round-trip times."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from overlay.attach.adapter import ClientSession, SessionError


class FakeAttachment:
    def __init__(self, reflexive: str = "127.0.0.1",
                 session: ClientSession | None = None) -> None:
        self.ok = SimpleNamespace(reflexive_host=reflexive, reflexive_port=40000)
        self.session = session

    def attach_ok(self) -> Any:
        return self.ok

    def primary_session(self) -> ClientSession | None:
        return self.session

    async def lookup(self, user: str) -> Any:
        raise SessionError("not in this test")

    def binding_supernodes(self) -> list[Any]:
        return []

    def reachable(self) -> bool:
        return True

    def relay_rtts(self) -> dict[bytes, float]:
        return {}

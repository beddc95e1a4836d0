"""Contact requests: invites from users who are not contacts, kept (bounded) until the user
accepts or declines them.

At most :data:`MAX_REQUESTS` senders, one request each (a newer invite from the same sender
replaces the older one and is counted); a request is dropped :data:`REQUEST_MAX_AGE_S` after
its latest invite. When the list is full, a request from a new sender is dropped (the pending
ones are kept: a flood of strangers cannot push a real request out). No I/O, no clock: the
caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from overlay.media.signalling import Offer

MAX_REQUESTS = 32
REQUEST_MAX_AGE_S = 600.0


@dataclass
class Request:
    invite: Offer
    first_at: float
    last_at: float
    invites: int = 1

    @property
    def user(self) -> str:
        return self.invite.from_user

    @property
    def key(self) -> bytes:
        return self.invite.from_key

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "device": self.invite.from_device,
                "public_key": self.key.hex(), "first_at": self.first_at,
                "last_at": self.last_at, "invites": self.invites}


class Requests:
    def __init__(self, max_requests: int = MAX_REQUESTS,
                 max_age_s: float = REQUEST_MAX_AGE_S) -> None:
        self.max_requests = max_requests
        self.max_age_s = max_age_s
        self._by_user: dict[str, Request] = {}

    def expire(self, now: float) -> None:
        for user, request in list(self._by_user.items()):
            if now - request.last_at > self.max_age_s:
                del self._by_user[user]

    def add(self, invite: Offer, now: float) -> bool:
        """Keep ``invite`` as its sender's request; False when the list is full."""
        self.expire(now)
        current = self._by_user.get(invite.from_user)
        if current is not None:
            current.invite, current.last_at = invite, now
            current.invites += 1
            return True
        if len(self._by_user) >= self.max_requests:
            return False
        self._by_user[invite.from_user] = Request(invite, now, now)
        return True

    def get(self, user: str, now: float) -> Request | None:
        self.expire(now)
        return self._by_user.get(user)

    def take(self, user: str) -> Request | None:
        return self._by_user.pop(user, None)

    def pending(self, now: float) -> list[Request]:
        self.expire(now)
        return sorted(self._by_user.values(), key=lambda r: r.first_at)

"""The control commands for contacts and contact requests.

``contacts`` (list), ``contact_add`` (``user``: ``NAME`` looks the key up and pins it;
``NAME#KEYPREFIX`` pins the key the prefix selects; a full 64-digit key is pinned without a
lookup), ``contact_forget`` (``user``), ``requests`` (the pending ones), ``accept`` and
``decline`` (``user``). Accepting makes the sender a contact and answers its pending invite;
declining drops the request and answers "declined" without any address.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from overlay.attach.adapter import SessionError
from overlay.client.contacts import Contact, Contacts, ContactsError, choose_key
from overlay.client.control import ControlError, ControlServer, JSONObject
from overlay.core.records import RecordError, SignedRecord, check_name
from overlay.core.user_ref import UserRef, parse_user_ref
from overlay.media.attachment import PeerRefused

Lookup = Callable[[str], Awaitable[tuple[list[SignedRecord], str]]]
FULL_KEY_DIGITS = 64


class ContactCommands:
    """The handlers; ``accept`` and ``decline`` are the daemon's (they answer the invite)."""

    def __init__(self, contacts: Contacts, lookup: Lookup, accept: Callable[[str], Contact],
                 decline: Callable[[str], None]) -> None:
        self.contacts = contacts
        self._lookup = lookup
        self._accept = accept
        self._decline = decline

    def register(self, control: ControlServer) -> None:
        user: dict[str, tuple[type | tuple[type, ...], bool]] = {"user": (str, True)}
        control.register("contacts", self.list, help="the contacts and their pinned keys")
        control.register("contact_add", self.add, user,
                         "pin a user's key: NAME (looked up) or NAME#KEYPREFIX")
        control.register("contact_forget", self.forget, user, "forget a contact and its key")
        control.register("requests", self.requests, help="pending contact requests")
        control.register("accept", self.accept, user,
                         "accept a contact request (and answer its invite)")
        control.register("decline", self.decline, user, "decline a contact request")

    async def list(self, args: JSONObject) -> JSONObject:
        return {"accept_from": self.contacts.accept_from,
                "contacts": [c.to_json() for c in self.contacts.all()]}

    async def add(self, args: JSONObject) -> JSONObject:
        ref = _ref(args["user"])
        if ref.key_prefix is not None and len(ref.key_prefix) == FULL_KEY_DIGITS:
            key: bytes | None = bytes.fromhex(ref.key_prefix)
        else:
            try:
                found, _ = await self._lookup(ref.name)
            except SessionError as exc:
                raise ControlError(f"lookup failed: {exc}") from None
            try:
                key = choose_key(ref, self.contacts.pinned(ref.name), found)
            except PeerRefused as exc:
                raise ControlError(str(exc)) from None
            if key is None:
                raise ControlError(f"no record of {ref}: give the whole key as "
                                   f"{ref.name}#KEY to add a user who is not known")
        assert key is not None
        try:
            contact = self.contacts.pin(ref.name, key)
        except (PeerRefused, ContactsError) as exc:
            raise ControlError(str(exc)) from None
        return {"contact": contact.to_json()}

    async def forget(self, args: JSONObject) -> JSONObject:
        name = _name(args["user"])
        if not self.contacts.forget(name):
            raise ControlError(f"{name} is not a contact")
        return {"forgotten": name}

    async def requests(self, args: JSONObject) -> JSONObject:
        return {"accept_from": self.contacts.accept_from,
                "requests": [r.to_json() for r in self.contacts.requests.pending(time.time())]}

    async def accept(self, args: JSONObject) -> JSONObject:
        name = _name(args["user"])
        try:
            contact = self._accept(name)
        except (PeerRefused, ContactsError) as exc:
            raise ControlError(str(exc)) from None
        return {"contact": contact.to_json(), "answering": True}

    async def decline(self, args: JSONObject) -> JSONObject:
        name = _name(args["user"])
        try:
            self._decline(name)
        except ContactsError as exc:
            raise ControlError(str(exc)) from None
        return {"declined": name}


def _ref(text: str) -> UserRef:
    try:
        return parse_user_ref(text)
    except RecordError as exc:
        raise ControlError(str(exc)) from None


def _name(text: str) -> str:
    try:
        return check_name(text)
    except RecordError as exc:
        raise ControlError(str(exc)) from None

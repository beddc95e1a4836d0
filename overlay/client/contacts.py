"""The user's contacts: one pinned key per user (trust on first use), kept in the state dir.

Like SSH's ``known_hosts``: the key of every user this client has dealt with (sent to, or
accepted an invite from, or added with ``contacts add``) is pinned in
``STATE_DIR/contacts.json`` (mode 0600, replaced atomically). A pinned user is a contact. A
different key for a pinned user later is refused with an error naming both keys, until the
user forgets the contact (``contacts forget NAME``) and adds it again.

:class:`Contacts` is also the media service's :class:`~overlay.media.attachment.ContactsPort`:
which key to send to (:func:`choose_key`), and whether an invite from someone who is not a
contact is answered now (``--accept-from anyone``) or kept as a request
(:mod:`overlay.client.requests`) until the user accepts or declines it.

``contacts.json``: ``{"version": 1, "contacts": {NAME: {"key": HEX64, "since": FLOAT}}}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.client.errors import ClientError
from overlay.client.requests import Request, Requests
from overlay.core.files import write_private_json
from overlay.core.identity import PUBLIC_KEY_BYTES
from overlay.core.logs import get_logger
from overlay.core.records import NAME_PATTERN, PresenceRecord, SignedRecord
from overlay.core.user_ref import UserRef
from overlay.media.attachment import Admission, PeerRefused
from overlay.media.signalling import Offer

log = get_logger(__name__)

FILE_NAME = "contacts.json"
MAX_CONTACTS = 10_000
MAX_FILE_BYTES = 2 * 1024 * 1024
POLICIES = ("contacts", "anyone")


class ContactsError(ClientError):
    """The contacts file is unreadable, or a contact cannot be added or found."""


@dataclass(frozen=True)
class Contact:
    name: str
    key: bytes
    since: float

    def to_json(self) -> dict[str, Any]:
        return {"user": self.name, "public_key": self.key.hex(), "since": self.since}


def keys_of(name: str, found: list[SignedRecord]) -> list[bytes]:
    """Every key that signed a presence record for ``name`` in ``found``, sorted."""
    return sorted({s.record.user_key for s in found
                   if isinstance(s.record, PresenceRecord) and s.record.user == name})


def changed_key(name: str, pinned: bytes, now_keys: list[bytes]) -> PeerRefused:
    return PeerRefused(f"{name}'s key changed: pinned {pinned.hex()}, the network now has "
                       f"{', '.join(k.hex() for k in now_keys)}; if {name} really has a new "
                       f"key, forget the contact and add it again")


def choose_key(ref: UserRef, pinned: bytes | None, found: list[SignedRecord]) -> bytes | None:
    """The key to deal with ``ref.name`` under: the pinned one (when it is among the keys
    found, or nothing is found), else the one key matching ``ref``'s prefix, else the name's
    only key; None when nothing names the user. Raises :class:`PeerRefused` when the pinned
    key differs from every key found or from the prefix, when no key matches the prefix, and
    when several keys claim the name and nothing chooses among them (a conflict)."""
    keys = keys_of(ref.name, found)
    if pinned is not None:
        if not ref.matches(pinned):
            raise PeerRefused(f"{ref.name} is pinned to key {pinned.hex()}, which does not "
                              f"start with {ref.key_prefix}")
        if keys and pinned not in keys:
            raise changed_key(ref.name, pinned, keys)
        return pinned
    matching = [k for k in keys if ref.matches(k)]
    if ref.key_prefix is not None and keys and not matching:
        raise PeerRefused(f"no record of {ref.name} under a key starting with "
                          f"{ref.key_prefix}; its keys: {', '.join(k.hex() for k in keys)}")
    if len(matching) > 1:
        raise PeerRefused(f"several keys claim {ref.name}: "
                          f"{', '.join(k.hex() for k in matching)}; choose one with "
                          f"{ref.name}#KEYPREFIX")
    return matching[0] if matching else None


class Contacts:
    """Pinned contacts (persisted when ``state_dir`` is given), the pending requests, and the
    policy for invites from others (``contacts``: a request; ``anyone``: answered)."""

    def __init__(self, state_dir: Path | None, accept_from: str = "contacts",
                 requests: Requests | None = None) -> None:
        if accept_from not in POLICIES:
            raise ValueError(f"accept-from is one of {', '.join(POLICIES)}")
        self.path = state_dir / FILE_NAME if state_dir is not None else None
        self.accept_from = accept_from
        self.requests = requests or Requests()
        self.entries: dict[str, Contact] = self._load()

    # -- the file -------------------------------------------------------------------------

    def _load(self) -> dict[str, Contact]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("too large")
            data = json.loads(self.path.read_text())
            entries = data["contacts"]
            if data.get("version") != 1 or not isinstance(entries, dict) \
                    or len(entries) > MAX_CONTACTS:
                raise ValueError("not a version 1 contacts file")
            out = {}
            for name, item in entries.items():
                key = bytes.fromhex(item["key"])
                if not NAME_PATTERN.match(name) or len(key) != PUBLIC_KEY_BYTES \
                        or type(item["since"]) not in (int, float):
                    raise ValueError(f"bad entry {name[:64]!r}")
                out[name] = Contact(name, key, float(item["since"]))
            return out
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # a pin file we cannot read must not silently become "trust anyone"
            raise ContactsError(f"{self.path}: unreadable contacts file ({exc}); fix or "
                                "remove it") from None

    def _save(self) -> None:
        if self.path is None:
            return
        write_private_json(self.path, {"version": 1, "contacts": {
            c.name: {"key": c.key.hex(), "since": c.since} for c in self.entries.values()}},
            indent=1)

    # -- contacts -------------------------------------------------------------------------

    def all(self) -> list[Contact]:
        return sorted(self.entries.values(), key=lambda c: c.name)

    def pin(self, name: str, key: bytes, now: float | None = None) -> Contact:
        """Make ``name`` a contact under ``key``; :class:`PeerRefused` naming both keys when
        it is pinned to another key."""
        current = self.entries.get(name)
        if current is not None:
            if current.key != key:
                raise PeerRefused(f"{name} is pinned to key {current.key.hex()}, not "
                                  f"{key.hex()}; forget the contact first to change it")
            return current
        if len(self.entries) >= MAX_CONTACTS:
            raise ContactsError(f"at most {MAX_CONTACTS} contacts")
        contact = Contact(name, key, time.time() if now is None else now)
        self.entries[name] = contact
        self._save()
        log.info("contact_pinned", user=name, key=key.hex())
        return contact

    def forget(self, name: str) -> bool:
        if self.entries.pop(name, None) is None:
            return False
        self._save()
        log.info("contact_forgotten", user=name)
        return True

    # -- requests -------------------------------------------------------------------------

    def accept(self, name: str, now: float | None = None) -> tuple[Contact, Request]:
        """Make the sender of the pending request ``name`` a contact; the request goes."""
        request = self.requests.get(name, time.time() if now is None else now)
        if request is None:
            raise ContactsError(f"no pending request from {name}")
        contact = self.pin(name, request.key, now)
        self.requests.take(name)
        return contact, request

    def decline(self, name: str, now: float | None = None) -> Request:
        request = self.requests.get(name, time.time() if now is None else now)
        if request is None:
            raise ContactsError(f"no pending request from {name}")
        self.requests.take(name)
        log.info("contact_request_declined", user=name)
        return request

    # -- overlay.media.attachment.ContactsPort ----------------------------------------------

    def choose_key(self, ref: UserRef, found: list[SignedRecord]) -> bytes | None:
        return choose_key(ref, self.pinned(ref.name), found)

    def pinned(self, user: str) -> bytes | None:
        contact = self.entries.get(user)
        return contact.key if contact is not None else None

    def dealt_with(self, user: str, key: bytes) -> None:
        self.pin(user, key)

    def admit(self, invite: Offer) -> Admission:
        if self.accept_from == "anyone":
            self.pin(invite.from_user, invite.from_key)
            return Admission.ANSWER
        if not self.requests.add(invite, time.time()):
            log.warning("contact_request_dropped", from_user=invite.from_user,
                        reason="too many pending requests")
            return Admission.DROPPED
        return Admission.REQUEST

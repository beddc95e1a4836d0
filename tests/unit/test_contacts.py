"""Contacts (pinned keys), contact requests, ``NAME#KEYPREFIX`` and the media service's
consent decisions, without sockets."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from overlay.client.contacts import Contacts, ContactsError, choose_key
from overlay.client.control import ControlServer
from overlay.client.requests import Requests
from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.records import MalformedRecord, SignedRecord
from overlay.core.user_ref import UserRef, parse_user_ref
from overlay.media import consent
from overlay.media.attachment import Admission, PeerRefused
from overlay.media.signalling import Candidates, MediaKeys, Offer, new_session_id, sign_offer

A, B, C = Identity.generate(), Identity.generate(), Identity.generate()


def rec(identity: Identity, user: str, device: str = "laptop") -> SignedRecord:
    return records.presence(identity, user, device, seq=1, supernode_key=b"\x01" * 32,
                            supernode_host="192.0.2.1", supernode_port=4000)


def invite(identity: Identity, user: str, to: str = "bob") -> Offer:
    return sign_offer(Offer("invite", new_session_id(), user, "laptop", identity.public_key, to,
                            MediaKeys().public, Candidates(), time.time()), identity)


def test_user_ref_parsing():
    assert parse_user_ref("alice") == UserRef("alice")
    ref = parse_user_ref("alice#ABCDEF0123")
    assert ref == UserRef("alice", "abcdef0123") and str(ref) == "alice#abcdef0123"
    assert UserRef("alice", A.public_id[:8]).matches(A.public_key)
    assert not UserRef("alice", B.public_id[:8]).matches(A.public_key)
    for bad in ("alice#abc", "alice#xyz12345", "Alice", "alice#" + "0" * 65, "#abcdef01"):
        with pytest.raises(MalformedRecord):
            parse_user_ref(bad)


def test_choose_key_pins_prefixes_and_conflicts():
    alice = [rec(A, "alice")]
    both = [rec(A, "alice"), rec(B, "alice", "phone")]
    assert choose_key(UserRef("alice"), None, alice) == A.public_key
    assert choose_key(UserRef("alice"), None, []) is None
    # a conflict is never resolved silently ...
    with pytest.raises(PeerRefused, match="several keys") as info:
        choose_key(UserRef("alice"), None, both)
    assert A.public_id in str(info.value) and B.public_id in str(info.value)
    # ... but a pin or a key prefix chooses
    assert choose_key(UserRef("alice"), A.public_key, both) == A.public_key
    assert choose_key(UserRef("alice", B.public_id[:8]), None, both) == B.public_key
    with pytest.raises(PeerRefused, match="no record"):
        choose_key(UserRef("alice", C.public_id[:8]), None, both)
    # the key changed: refused, naming both
    with pytest.raises(PeerRefused, match="key changed") as info:
        choose_key(UserRef("alice"), A.public_key, [rec(B, "alice")])
    assert A.public_id in str(info.value) and B.public_id in str(info.value)
    with pytest.raises(PeerRefused, match="pinned"):
        choose_key(UserRef("alice", B.public_id[:8]), A.public_key, both)
    # a pinned user who is offline is still sent to under the pin
    assert choose_key(UserRef("alice"), A.public_key, []) == A.public_key


def test_contacts_persist_private_and_refuse_another_key(tmp_path: Path):
    book = Contacts(tmp_path)
    book.pin("alice", A.public_key)
    assert book.pin("alice", A.public_key).key == A.public_key  # idempotent
    with pytest.raises(PeerRefused) as info:
        book.pin("alice", B.public_key)
    assert A.public_id in str(info.value) and B.public_id in str(info.value)
    path = tmp_path / "contacts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Contacts(tmp_path)
    assert again.pinned("alice") == A.public_key and [c.name for c in again.all()] == ["alice"]
    assert again.forget("alice") and not again.forget("alice")
    assert Contacts(tmp_path).pinned("alice") is None
    path.write_text(json.dumps({"version": 1, "contacts": {"alice": {"key": "00",
                                                                     "since": 1.0}}}))
    with pytest.raises(ContactsError, match="unreadable"):
        Contacts(tmp_path)
    path.write_text("{")
    with pytest.raises(ContactsError):
        Contacts(tmp_path)


def test_requests_are_bounded_by_count_and_age():
    requests = Requests(max_requests=2, max_age_s=10)
    assert requests.add(invite(A, "alice"), 0.0)
    assert requests.add(invite(A, "alice"), 1.0)  # the same sender: replaced and counted
    assert requests.add(invite(B, "bert"), 2.0)
    assert not requests.add(invite(C, "carl"), 3.0)  # full: the pending ones stay
    assert [(r.user, r.invites) for r in requests.pending(3.0)] == [("alice", 2), ("bert", 1)]
    assert [r.user for r in requests.pending(11.5)] == ["bert"]  # alice's last is 10.5 s old
    assert requests.add(invite(C, "carl"), 11.5)


def test_policy_admits_contacts_only_and_accept_is_mutual(tmp_path: Path):
    book = Contacts(tmp_path)
    assert book.admit(invite(A, "alice")) is Admission.REQUEST
    assert [r.user for r in book.requests.pending(time.time())] == ["alice"]
    with pytest.raises(ContactsError, match="no pending request"):
        book.accept("bert")
    contact, request = book.accept("alice")
    assert contact.key == A.public_key and request.key == A.public_key
    assert not book.requests.pending(time.time())
    anyone = Contacts(None, "anyone")
    assert anyone.admit(invite(B, "bert")) is Admission.ANSWER
    assert anyone.pinned("bert") == B.public_key
    book.admit(invite(C, "carl"))
    assert book.decline("carl").user == "carl" and book.pinned("carl") is None
    small = Contacts(None, requests=Requests(max_requests=1))
    assert small.admit(invite(A, "alice")) is Admission.REQUEST
    assert small.admit(invite(B, "bert")) is Admission.DROPPED


class FakeAttachment:
    def __init__(self, found: list[SignedRecord]) -> None:
        self.found = found
        self.lookups = 0

    async def lookup(self, user: str) -> tuple[list[SignedRecord], str]:
        self.lookups += 1
        return [r for r in self.found if r.record.claimed_name == user], "test"


async def test_vet_invite_decides_answer_request_or_refuse(tmp_path: Path):
    log: Any = consent.log
    book = Contacts(tmp_path)
    att: Any = FakeAttachment([rec(A, "alice"), rec(C, "carl"), rec(B, "carl", "phone")])
    assert await consent.vet_invite(att, book, invite(A, "alice"), log) == consent.REQUEST
    book.accept("alice")
    assert await consent.vet_invite(att, book, invite(A, "alice"), log) == consent.ANSWER
    # an impostor under the pinned name: refused without a lookup
    lookups = att.lookups
    assert await consent.vet_invite(att, book, invite(B, "alice"), log) == consent.REFUSED
    assert att.lookups == lookups
    # a key the records do not carry; a name several keys claim
    assert await consent.vet_invite(att, book, invite(B, "bert"), log) == consent.REFUSED
    assert await consent.vet_invite(att, book, invite(C, "carl"), log) == consent.REFUSED
    assert [r.user for r in book.requests.pending(time.time())] == []


async def test_await_answer_waits_longer_once_pending():
    log: Any = consent.log
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Offer] = loop.create_future()
    pending = asyncio.Event()
    pending.set()
    progress: dict[str, Any] = {}
    with pytest.raises(consent.NotAccepted, match=r"within 0\.1s"):
        await consent.await_answer(answer, pending, "bob", 0.1, progress, log)
    assert progress["state"] == "waiting for acceptance"
    answer = loop.create_future()
    real = invite(B, "bob", "alice")
    loop.call_later(0.05, answer.set_result, real)
    assert await consent.await_answer(answer, pending, "bob", 5, {}, log) is real


async def test_contact_commands_over_the_control_socket(tmp_path: Path):
    from overlay.client.contact_commands import ContactCommands

    book = Contacts(tmp_path)
    found = [rec(A, "alice"), rec(B, "bert"), rec(C, "bert", "phone")]

    async def lookup(user: str) -> tuple[list[SignedRecord], str]:
        return [r for r in found if r.record.claimed_name == user], "test"

    answered: list[str] = []

    def accept(user: str) -> Any:
        contact, _ = book.accept(user)
        answered.append(user)
        return contact

    server = ControlServer(tmp_path / "c.sock")
    def decline(user: str) -> None:
        book.decline(user)

    ContactCommands(book, lookup, accept, decline).register(server)

    async def ask(**req: Any) -> dict[str, Any]:
        return await server.handle_line(json.dumps(req).encode())

    assert (await ask(cmd="contact_add", user="alice"))["contact"]["public_key"] == A.public_id
    conflict = await ask(cmd="contact_add", user="bert")
    assert not conflict["ok"] and "several keys" in conflict["error"]
    picked = await ask(cmd="contact_add", user=f"bert#{C.public_id[:10]}")
    assert picked["contact"]["public_key"] == C.public_id
    full = await ask(cmd="contact_add", user=f"dora#{B.public_id}")  # no lookup needed
    assert full["contact"]["public_key"] == B.public_id
    assert [c["user"] for c in (await ask(cmd="contacts"))["contacts"]] == [
        "alice", "bert", "dora"]
    assert (await ask(cmd="contact_forget", user="dora"))["forgotten"] == "dora"
    book.admit(invite(Identity.generate(), "erin"))
    assert [r["user"] for r in (await ask(cmd="requests"))["requests"]] == ["erin"]
    assert (await ask(cmd="accept", user="erin"))["answering"] is True
    assert answered == ["erin"]
    missing = await ask(cmd="decline", user="erin")
    assert not missing["ok"] and "no pending request" in missing["error"]

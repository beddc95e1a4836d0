"""The honest flow with relay credentials: the caller signs a voucher per relay in its invite,
the callee countersigns in its answer, and the media service's own relay attempts
(``RelayPaths.attempts``) take both halves through a real supernode's relay; a peer
that signs no voucher still gets through a relay that is its caller's own supernode, by a
reservation over the attachment (``RelayReserve``). Real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overlay.attach.adapter import ClientSession
from overlay.core import records
from overlay.core.identity import Identity
from overlay.media.connect import connect_as_initiator, connect_as_responder
from overlay.media.paths import Paths
from overlay.media.relay_selector import session_token
from overlay.media.relay_vouchers import callee_signatures, caller_signatures, voucher_for
from overlay.media.service import MediaService
from overlay.media.session import MediaConfig, Session
from overlay.media.signalling import (
    Candidates,
    MediaKeys,
    Offer,
    new_session_id,
    open_offer,
    sign_offer,
    transcript_hash,
)
from overlay.node.daemon import NodeOptions
from overlay.node.supernode import Supernode, SupernodeOptions
from overlay.relay.budget import BudgetConfig
from overlay.relay.voucher import check_voucher
from tests.helpers.media_attachment import FakeAttachment
from tests.helpers.netutil import loopback_ips
from tests.helpers.node_keys import production_identity

PORT = 4320
MBIT = 1_000_000


@contextlib.asynccontextmanager
async def relay_supernode() -> AsyncIterator[Supernode]:
    (ip,) = loopback_ips(1)
    node = Supernode(NodeOptions(listen=(ip, PORT)),
                     SupernodeOptions(relay=BudgetConfig(total_bps=2 * MBIT)))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def offers(node: Supernode, alice: Identity, bob: Identity, *, sign: bool = True,
           countersign: bool = True) -> tuple[Offer, Offer, Session, Session]:
    """An invite naming ``node`` as the relay and its answer, as they arrive (parsed)."""
    relays = ((node.advertised[0], PORT, node.identity.public_key),)
    secret = os.urandom(32)
    caller = Session(new_session_id(), "bob", initiator=True)
    expires = int(time.time()) + 720
    sigs = caller_signatures(alice, relays, secret, bob.public_key, expires) if sign else ()
    invite = open_offer(sign_offer(Offer(
        "invite", caller.session_id, "alice", "phone", alice.public_key, "bob", caller.keys.public,
        Candidates(), time.time(), relays=relays, relay_secret=secret,
        relay_expires=expires if sigs else 0, relay_sigs=sigs), alice).wire)
    callee = Session(invite.session_id, "alice", initiator=False)
    counter = callee_signatures(bob, invite, time.time()) if countersign else ()
    answer = open_offer(sign_offer(Offer(
        "answer", callee.session_id, "bob", "laptop", bob.public_key, "alice", callee.keys.public,
        Candidates(), time.time(), relay_expires=invite.relay_expires if counter else 0,
        relay_sigs=counter), bob).wire)
    return invite, answer, caller, callee


async def race(services: tuple[MediaService, MediaService], invite: Offer, answer: Offer,
               caller: Session, callee: Session) -> tuple[Any, Any, Any]:
    """Both sides' relay attempts, raced as the service races them; the streams talk."""
    shared = caller.keys.shared_secret(answer.ephemeral)
    transcript = transcript_hash(invite, answer)
    a_attempts = services[0].relays.attempts(caller, invite, answer)
    b_attempts = services[1].relays.attempts(callee, invite, answer)
    (a, timeline), (b, _) = await asyncio.gather(
        connect_as_initiator(a_attempts, services[0].paths.securer(caller, shared, transcript),
                             staggers={"relay": 0.0}),
        connect_as_responder(b_attempts, services[1].paths.securer(callee, shared, transcript),
                             staggers={"relay": 0.0}))
    await a.send(b"through the relay, end to end")
    assert await b.recv() == b"through the relay, end to end"
    return a, b, timeline


def services(tmp_path: Path, alice: Identity, bob: Identity,
             alice_session: ClientSession | None = None) -> tuple[MediaService, MediaService]:
    return (MediaService(MediaConfig(alice, "alice", "phone", tmp_path / "a"),
                         FakeAttachment(session=alice_session)),
            MediaService(MediaConfig(bob, "bob", "laptop", tmp_path / "b"), FakeAttachment()))


def test_offers_carry_the_voucher_signatures_and_older_offers_still_parse() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    relays = (("192.0.2.9", 7000, os.urandom(32)), ("192.0.2.10", 7000, os.urandom(32)))
    secret, expires = os.urandom(32), int(time.time()) + 720
    sigs = caller_signatures(alice, relays, secret, bob.public_key, expires)
    invite = open_offer(sign_offer(Offer(
        "invite", new_session_id(), "alice", "phone", alice.public_key, "bob",
        MediaKeys().public, Candidates(), time.time(), relays=relays, relay_secret=secret,
        relay_expires=expires, relay_sigs=sigs), alice).wire)
    assert invite.relay_sigs == sigs and invite.relay_expires == expires
    counter = callee_signatures(bob, invite, time.time())
    answer = open_offer(sign_offer(Offer(
        "answer", invite.session_id, "bob", "laptop", bob.public_key, "alice",
        MediaKeys().public, Candidates(), time.time(), relay_expires=expires,
        relay_sigs=counter), bob).wire)
    for i, (_, _, key) in enumerate(relays):
        voucher = voucher_for(invite, answer, i)
        assert voucher is not None
        token = session_token(secret, key)
        assert check_voucher(voucher, key, token, time.time()).keys == (
            alice.public_key, bob.public_key)
    # an offer without vouchers is the 14 fields it always was
    plain = sign_offer(Offer("invite", new_session_id(), "alice", "phone", alice.public_key,
                             "bob", MediaKeys().public, Candidates(), time.time()), alice)
    assert len(plain.fields()) == 14 and open_offer(plain.wire).relay_sigs == ()
    # the callee does not countersign an expiry a relay would refuse
    late = Offer("invite", new_session_id(), "alice", "phone", alice.public_key, "bob",
                 MediaKeys().public, Candidates(), time.time(), relays=relays,
                 relay_secret=secret, relay_expires=int(time.time()) + 86_400, relay_sigs=sigs)
    assert callee_signatures(bob, late, time.time()) == ()


async def test_caller_and_callee_meet_at_the_relay_with_their_voucher(tmp_path: Path) -> None:
    async with relay_supernode() as node:
        alice, bob = Identity.generate(), Identity.generate()
        a, b, timeline = await race(services(tmp_path, alice, bob),
                                    *offers(node, alice, bob))
        assert "selected relay-0" in [e for _, e in timeline.events]
        assert a.path == b.path == "relay"
        assert node.relay.stats.paired == 1
        assert not node.relay.stats.refused.keys() - {"unknown token"}  # (callee first)
        await asyncio.gather(a.close(), b.close())


async def test_without_a_countersignature_the_callers_own_supernode_admits_a_reservation(
    tmp_path: Path,
) -> None:
    async with relay_supernode() as node:
        alice, bob = Identity.generate(), Identity.generate()
        host = node.advertised[0]
        session = await ClientSession.connect(host, PORT, alice,
                                              expected_node_key=node.identity.public_key,
                                              user="alice", device="phone")
        try:
            await session.attach(records.presence(
                alice, "alice", "phone", seq=1, supernode_key=node.identity.public_key,
                supernode_host=host, supernode_port=PORT))
            # the callee signs no voucher (an older client): the caller reserves instead
            invite, answer, caller, callee = offers(node, alice, bob, countersign=False)
            assert voucher_for(invite, answer, 0) is None
            a, b, _ = await race(services(tmp_path, alice, bob, session), invite, answer,
                                 caller, callee)
            assert node.relay.stats.paired == 1
            assert not node.relay.stats.refused.keys() - {"unknown token"}  # (callee first)
            await asyncio.gather(a.close(), b.close())
            # and without a reservation (the caller is attached elsewhere) it is refused
            invite, answer, caller, callee = offers(node, alice, bob, countersign=False)
            with pytest.raises(Exception, match="unreserved"):
                await race(services(tmp_path, alice, bob), invite, answer, caller, callee)
            assert node.relay.stats.refused["unreserved"] >= 1
        finally:
            session.close("done")


@pytest.mark.parametrize(("session_bytes", "size"), [(64 * 2**20, 300_000), (100_000, 650_000)],
                         ids=["one session", "renewed at the relay's byte limit"])
async def test_a_send_whose_only_path_is_a_relay_gets_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_bytes: int, size: int,
) -> None:
    """The whole caller/callee flow in one process: a bootstrap node, two relaying
    supernodes, alice and bob as client daemons; direct paths are taken away (as behind two
    symmetric NATs), so the file must go through a relay chosen from the directory, on the
    vouchers the invite and the answer carry. A file larger than a relay session may carry
    goes on in new sessions (more than ``MAX_SESSIONS_PER_SEND``: a session ended at the
    limit the relay announced is not a failure), resumed where the receiver's data ends."""
    from overlay.attach import SessionConfig
    from overlay.client.daemon import ClientDaemon
    from overlay.client.options import ClientOptions
    from overlay.dht import DHTConfig
    from overlay.node.daemon import NodeDaemon
    from overlay.node.tcp_service import ServiceLimits
    from tests.helpers.netutil import wait_for

    monkeypatch.setattr(Paths, "attempts", lambda *args: {})  # no direct path
    ips = loopback_ips(5)
    dht = DHTConfig(refresh_interval_s=3600)
    limits = ServiceLimits(session=SessionConfig(heartbeat_interval_s=1.0))
    boot = NodeDaemon(NodeOptions(listen=(ips[0], PORT), dht=dht, limits=limits),
                      production_identity())
    nodes: list[NodeDaemon] = [boot]
    clients: list[ClientDaemon] = []
    try:
        await boot.start()
        for ip in ips[1:3]:
            sn = Supernode(NodeOptions(listen=(ip, PORT), bootstrap=[(ips[0], PORT)], dht=dht,
                                       limits=limits),
                           SupernodeOptions(record_refresh_s=2.0,
                                            relay=BudgetConfig(
                                                total_bps=50 * MBIT,
                                                max_session_bytes=session_bytes)),
                           production_identity())
            await sn.start()
            nodes.append(sn)
        for user in ("alice", "bob"):
            client = ClientDaemon(ClientOptions(
                user=user, device="laptop", key_path=tmp_path / f"{user}.key",
                bootstrap=[(ips[0], PORT)], state_dir=tmp_path / user, heartbeat_s=1.0,
                may_become_supernode=False, accept_from="anyone", inbox=tmp_path / user / "in"))
            await client.start()
            clients.append(client)
        await wait_for(lambda: all(c.status()["state"] == "attached" for c in clients), 20)
        payload = tmp_path / "notes.bin"
        payload.write_bytes(os.urandom(size))
        alice = clients[0]
        result = await asyncio.wait_for(alice.media.send("bob", payload), 90)
        assert result["path"] == "relay" and result["relay"] is not None
        received = tmp_path / "bob" / "in" / "notes.bin"
        assert received.read_bytes() == payload.read_bytes()
        relays = [n for n in nodes[1:] if isinstance(n, Supernode)]
        assert sum(r.relay.stats.paired for r in relays) >= 1
        ended_at_limit = sum(r.relay.stats.ended["byte limit"] for r in relays)
        assert ended_at_limit == 0 if size < session_bytes else ended_at_limit > 5
        refused = sum((r.relay.stats.refused for r in relays), start=Counter[str]())
        assert not refused.keys() - {"unknown token"}, refused
    finally:
        for c in clients:
            await c.stop()
        for n in reversed(nodes):
            await n.stop()


async def test_only_an_attached_client_reserves_and_within_its_key_limit() -> None:
    from overlay.attach.messages import CLIENT_SENDS, LOOKUP_ONLY_SENDS, RelayReserve
    from overlay.relay.client import relay_connect
    from overlay.relay.protocol import ROLE_CALLEE, ROLE_CALLER
    from overlay.relay.voucher import token_hash

    async with relay_supernode() as node:
        host, key = node.advertised[0], node.identity.public_key
        mallory = Identity.generate()
        # a lookup-only session (throwaway key) may not even send it (the server's check too)
        assert RelayReserve in CLIENT_SENDS and RelayReserve not in LOOKUP_ONLY_SENDS
        # a session that has not attached is refused
        unattached = await ClientSession.connect(host, PORT, mallory, expected_node_key=key,
                                                 user="mallory", device="box")
        reply = await unattached.reserve_relay(os.urandom(32))
        assert (reply.ok, reply.reason) == (False, "not attached")
        assert node.relay.stats.refused["not attached"] == 1
        unattached.close("done")
        # an attached client: up to its key's limit (4), then "key limit"
        alice = Identity.generate()
        session = await ClientSession.connect(host, PORT, alice, expected_node_key=key,
                                              user="alice", device="phone")
        try:
            await session.attach(records.presence(
                alice, "alice", "phone", seq=1, supernode_key=key, supernode_host=host,
                supernode_port=PORT))
            tokens = [os.urandom(32) for _ in range(5)]
            replies = [await session.reserve_relay(token_hash(t)) for t in tokens]
            assert [r.ok for r in replies] == [True] * 4 + [False]
            assert replies[-1].reason == "key limit" and replies[0].ttl_s == 60.0
            # a reserved token opens a session without a voucher, once
            a = asyncio.create_task(relay_connect(host, PORT, tokens[0], ROLE_CALLER, timeout=5))
            b = await relay_connect(host, PORT, tokens[0], ROLE_CALLEE, timeout=5)
            a_stream = await a
            assert node.relay.admission.per_key[alice.public_key] == 1
            assert node.relay.admission.reserved[alice.public_key] == 3
            await asyncio.gather(a_stream.close(), b.close())
        finally:
            session.close("done")

"""DHT session keys (overlay.dht.sessions) and the session envelope: sans-IO, real crypto;
the last test recovers a lost session between two real nodes on loopback."""

from __future__ import annotations

import time

import pytest
from nacl.bindings import crypto_scalarmult_base

from overlay.core.identity import Identity, node_id_for
from overlay.dht import DHTConfig, DHTNode
from overlay.dht.envelope import (
    EnvelopeError,
    Flags,
    Kind,
    SessionIds,
    authenticate_mac,
    parse,
    seal_session,
)
from overlay.dht.sessions import ROTATE_S, SessionTable, ephemeral_id, session_key
from tests.helpers.netutil import loopback_ips, wait_for

A, B = Identity.from_seed(b"\x03" * 32), Identity.from_seed(b"\x04" * 32)
#: docs/ARCHITECTURE.md, "DHT datagram": the session test vector
VECTOR_KEY = "f338cda5db5da0ebb87c39beaf7ee90d0e71f4c7cb80fb5a7b9c5d105211fd8e"
VECTOR_DATAGRAM = (
    "4f564c33020505050505050505050505050505050505050505ed4928c628d1c2c6eae903389059956129"
    "59273a5c63f93636c14614ac8737d1c5b940ed3f65c391965de8295fc5d25f474fa57b0000018bcfe5680000"
    "f6b63539d480c7daac05cabd7770bbf2b37a22d2ceda1a8b15f5b5f3297f322d92a470696e6790"
)


def test_the_documented_vector() -> None:
    ea, eb = b"\x01" * 32, b"\x02" * 32
    pa, pb = crypto_scalarmult_base(ea), crypto_scalarmult_base(eb)
    key = session_key(ea, pa, A.public_key, pb, B.public_key)
    assert key is not None and key.hex() == VECTOR_KEY
    assert session_key(eb, pb, B.public_key, pa, A.public_key) == key  # both sides agree
    datagram = seal_session(key, A.public_key, SessionIds(ephemeral_id(pa), ephemeral_id(pb)),
                            Kind.REQUEST, b"\x05" * 20, Flags.NONE, ["ping", []],
                            recipient=node_id_for(B.public_key), now=1_700_000_000.0)
    assert datagram.hex() == VECTOR_DATAGRAM
    env = authenticate_mac(parse(datagram), key)
    assert (env.kind, env.payload, env.sender_key) == (Kind.REQUEST, ["ping", []],
                                                      A.public_key)


def pair(now: float = 0.0) -> tuple[SessionTable, SessionTable]:
    return (SessionTable(A.node_id, A.public_key, now),
            SessionTable(B.node_id, B.public_key, now))


def exchange(a: SessionTable, b: SessionTable, now: float) -> None:
    """a's signed request (its ephemeral) and b's signed answer (its own)."""
    offered = a.offer(now)
    b.learn(A.node_id, A.public_key, offered)
    a.learn(B.node_id, B.public_key, b.offer(now))
    a.acknowledge(B.node_id, ephemeral_id(offered))


def test_one_signed_exchange_gives_both_sides_the_same_key() -> None:
    a, b = pair()
    assert a.sending(B.node_id, 1.0) is None
    exchange(a, b, 1.0)
    sent = a.sending(B.node_id, 1.0)
    assert sent is not None
    key, ids = sent
    assert b.receiving(A.node_id, ids, 1.0) == key
    # b does not know yet that a holds its ephemeral; a's session datagram proves it
    assert b.sending(A.node_id, 1.0) is None
    b.acknowledge(A.node_id, ids.recipient_eph_id)
    back = b.sending(A.node_id, 1.0)
    assert back is not None and back[0] == key
    assert b.reply(A.node_id, ids, 1.0) == (key, SessionIds(ids.recipient_eph_id,
                                                            ids.sender_eph_id))


def test_keys_rotate_and_the_previous_ephemeral_expires() -> None:
    a, b = pair()
    exchange(a, b, 1.0)
    sent = a.sending(B.node_id, 1.0)
    assert sent is not None
    ids = sent[1]
    later = 1.0 + ROTATE_S
    assert a.sending(B.node_id, later) is None  # a rotated: sign again until acknowledged
    b_key_then = b.receiving(A.node_id, ids, later)
    assert b_key_then == sent[0]  # datagrams in flight under the old pair still count
    much_later = later + 2 * ROTATE_S
    assert a.receiving(B.node_id, SessionIds(ids.recipient_eph_id, ids.sender_eph_id),
                       much_later) is None  # a's first ephemeral is gone for good
    assert b.receiving(A.node_id, ids, much_later) is None


def test_a_new_ephemeral_from_the_peer_resets_what_it_holds() -> None:
    a, b = pair()
    exchange(a, b, 1.0)
    restarted = SessionTable(B.node_id, B.public_key, 2.0)  # b lost its state
    a.learn(B.node_id, B.public_key, restarted.offer(2.0))
    assert a.sending(B.node_id, 2.0) is None
    exchange(a, restarted, 3.0)
    assert a.sending(B.node_id, 3.0) is not None


def test_unacknowledge_falls_back_to_signing() -> None:
    a, b = pair()
    exchange(a, b, 1.0)
    a.unacknowledge(B.node_id)
    assert a.sending(B.node_id, 1.0) is None


def test_peers_are_bounded_least_recently_used_first() -> None:
    table = SessionTable(A.node_id, A.public_key, 0.0, max_peers=3)
    peers = [Identity.generate() for _ in range(4)]
    for p in peers[:3]:
        table.learn(p.node_id, p.public_key, crypto_scalarmult_base(p.node_id + b"\0" * 12))
    table.receiving(peers[0].node_id, SessionIds(b"\0" * 8, b"\0" * 8), 0.0)  # touch
    table.learn(peers[3].node_id, peers[3].public_key, b"\x09" * 32)
    assert len(table) == 3 and table.stats.evicted_peers == 1
    assert table.receiving(peers[1].node_id, SessionIds(b"\0" * 8, b"\0" * 8), 0.0) is None


def test_a_low_order_ephemeral_gives_no_session() -> None:
    a, _ = pair()
    a.learn(B.node_id, B.public_key, b"\x01" + b"\0" * 31)  # u = 1: a point of small order
    a.acknowledge(B.node_id, ephemeral_id(a.offer(0.0)))
    assert a.sending(B.node_id, 0.0) is None


def test_no_session_with_oneself_and_none_without_an_ephemeral() -> None:
    a, _ = pair()
    a.learn(A.node_id, A.public_key, b"\x09" * 32)
    a.learn(B.node_id, B.public_key, b"\0" * 32)
    assert len(a) == 0


@pytest.mark.parametrize("position", [0, 4, 5, 30, 60, 80, 85, 90, 100, 110, 120])
def test_any_flipped_bit_fails_the_mac(position: int) -> None:
    key = b"\x07" * 32
    datagram = bytearray(seal_session(
        key, A.public_key, SessionIds(b"\x01" * 8, b"\x02" * 8), Kind.REQUEST, b"\x05" * 20,
        Flags.NONE, ["find_value", [b"\x02" * 20]], recipient=B.node_id))
    datagram[position] ^= 0x01
    with pytest.raises(EnvelopeError):
        authenticate_mac(parse(bytes(datagram)), key)


def test_answering_a_signed_request_lets_the_answerer_use_the_session() -> None:
    a, b = pair()
    b.learn(A.node_id, A.public_key, a.offer(1.0))  # a's signed request
    assert b.sending(A.node_id, 1.0) is None
    a.learn(B.node_id, B.public_key, b.offer(1.0))  # b's signed answer reaches a
    b.answered(A.node_id, 1.0)
    sent = b.sending(A.node_id, 1.0)
    assert sent is not None
    assert a.receiving(B.node_id, sent[1], 1.0) == sent[0]


async def test_a_node_that_lost_its_sessions_is_reached_again() -> None:
    """B forgets every session (a restart, or evicted peers): A's next session request is
    dropped there, its retransmission goes signed and is answered, and the session is set up
    again by that exchange."""

    config = DHTConfig(refresh_interval_s=3600)
    a, b = DHTNode(Identity.generate(), config), DHTNode(Identity.generate(), config)
    ips = loopback_ips(2)
    await a.start(ips[0], 0)
    await b.start(ips[1], 0)
    try:
        await a.call(b.address, "ping", node_id=b.node_id)
        assert a._proto.sessions.established(b.node_id, time.monotonic())
        await wait_for(lambda: not b._proto._verifying)  # B's check of A is over
        b._proto.sessions = SessionTable(b.node_id, b.identity.public_key, time.monotonic())
        reply = await a.call(b.address, "find_node", b"\x01" * 20, node_id=b.node_id)
        assert set(reply) == {"nodes"}
        assert b.stats.dropped["no_session"] == 1
        assert a.stats.retransmits == 1
        before = a.stats.sealed["session"]
        await a.call(b.address, "ping", node_id=b.node_id)
        assert a.stats.sealed["session"] == before + 1  # MAC'd again
        assert b.stats.dropped["no_session"] == 1
    finally:
        a.stop()
        b.stop()

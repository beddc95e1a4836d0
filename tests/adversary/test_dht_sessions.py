"""Session-MAC'd DHT datagrams (envelope v3), attacked (issue 12, performance part).

Once two nodes hold each other's signed ephemeral keys, their datagrams carry a MAC instead
of an ed25519 signature. The MAC'd form must stay as bound as the signed one. Mallory has her
own key, her own node (with its own, genuine session with the victim), a raw UDP socket on
loopback that an honest node sends to (as any router on the path would see its datagrams),
and the documented format (:mod:`overlay.dht.envelope`):

* a captured session request replayed (same msg_id) is served once;
* one re-addressed to another node that also holds a session with the sender (as is, or with
  its recipient and recipient ephemeral id rewritten to that node's) is refused;
* a datagram claiming to come from an honest node with a made-up MAC, or MAC'd under
  mallory's own session with the victim, is refused, while mallory's genuine session datagram
  is served (the path the forgeries take works).

What a user would notice is the record: a ``store`` that got through would put it on the
node under attack. "Refused" is also observed as silence: the node answers datagrams in
order, so an answer to a forgery would arrive before the answer to the genuine datagram
sent after it.
"""

from __future__ import annotations

import os
import time

import pytest

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht import DHTNode
from overlay.dht.envelope import (
    EnvelopeError,
    Flags,
    Kind,
    SessionIds,
    open_datagram,
    parse,
    seal_session,
)
from overlay.dht.sessions import ephemeral_id
from tests.helpers.dht_tap import Tap
from tests.helpers.netutil import loopback_ips, network_config

RECIPIENT = slice(57, 77)
RECIPIENT_EPH_ID = slice(94, 102)
SESSION_REQUEST = 2  # kind byte of a MAC'd request


async def nodes(count: int) -> tuple[list[DHTNode], Tap]:
    ips = loopback_ips(count + 1)
    config = network_config()
    started = []
    for ip in ips[:count]:
        node = DHTNode(Identity.generate_node(config.id_puzzle_bits), config)
        await node.start(ip, 0)
        started.append(node)
    return started, Tap(ips[count])


async def open_session(a: DHTNode, b: DHTNode) -> None:
    """One signed exchange: afterwards ``a`` sends ``b`` session datagrams."""
    await a.call(b.address, "ping", node_id=b.node_id)
    assert a._proto.sessions.established(b.node_id, time.monotonic())


def alice_record() -> records.SignedRecord:
    return records.presence(Identity.generate(), "alice", "phone", seq=1, online=False)


def stop(all_nodes: list[DHTNode], tap: Tap) -> None:
    tap.close()
    for node in all_nodes:
        node.stop()


async def test_a_replayed_session_request_is_served_once() -> None:
    (victim, honest), tap = await nodes(2)
    try:
        await open_session(honest, victim)
        signed = alice_record()
        captured = await tap.capture(honest, "store", signed.dht_key, signed.wire,
                                     to=victim.node_id)
        assert captured[4] == SESSION_REQUEST, "the honest node did not use its session"
        first = await tap.capture(honest, "ping", to=victim.node_id)
        answers, _ = await tap.send_then([captured], first, victim)
        assert len(answers) == 1  # the genuine delivery
        assert [s.wire for s in victim.storage.values(signed.dht_key)] == [signed.wire]
        again = await tap.capture(honest, "ping", to=victim.node_id)
        answers, _ = await tap.send_then([captured], again, victim)
        assert answers == [], "the victim answered the same session request twice"
        assert victim.stats.dropped["replayed"] == 1
    finally:
        stop([victim, honest], tap)


async def test_a_session_request_readdressed_to_another_node_is_refused() -> None:
    (victim, honest, other), tap = await nodes(3)
    try:
        await open_session(honest, victim)
        await open_session(honest, other)
        signed = alice_record()
        captured = await tap.capture(honest, "store", signed.dht_key, signed.wire,
                                     to=victim.node_id)
        assert captured[4] == SESSION_REQUEST
        # as captured, and rewritten to name the other node and its current ephemeral
        other_eph = ephemeral_id(other._proto.sessions.offer(time.monotonic()))
        readdressed = bytearray(captured)
        readdressed[RECIPIENT] = other.node_id
        readdressed[RECIPIENT_EPH_ID] = other_eph
        genuine = await tap.capture(honest, "ping", to=other.node_id)
        answers, _ = await tap.send_then([captured, bytes(readdressed)], genuine, other)
        assert answers == [], "a node served a session request meant for another node"
        assert other.storage.values(signed.dht_key) == []
        assert other.stats.dropped["no_session"] == 1  # the victim's ephemeral is not its own
        assert other.stats.dropped["bad_mac"] == 1  # its own: the key is not the victim's
    finally:
        stop([victim, honest, other], tap)


async def test_a_forged_mac_or_another_senders_session_is_refused() -> None:
    (victim, honest, mallory_node), tap = await nodes(3)
    try:
        await open_session(honest, victim)
        await open_session(mallory_node, victim)
        # what an honest session datagram to the victim names (mallory sees it on the path)
        honest_ids = parse(await tap.capture(honest, "ping", to=victim.node_id)).session
        assert honest_ids is not None
        keyed = mallory_node._proto.sessions.sending(victim.node_id, time.monotonic())
        assert keyed is not None
        mallory_key, mallory_ids = keyed
        signed = alice_record()
        store = ["store", [signed.dht_key, signed.wire]]

        def as_honest(key: bytes, ids: SessionIds) -> bytes:
            return seal_session(key, honest.identity.public_key, ids, Kind.REQUEST,
                                os.urandom(20), Flags.NONE, store, recipient=victim.node_id)

        forged_mac = bytearray(as_honest(mallory_key, honest_ids))
        forged_mac[102:118] = os.urandom(16)
        forgeries = [
            bytes(forged_mac),  # the honest node's session, a made-up MAC
            as_honest(mallory_key, honest_ids),  # the honest node's ids, mallory's key
            as_honest(mallory_key, mallory_ids),  # mallory's whole session, honest's name
        ]
        genuine = seal_session(mallory_key, mallory_node.identity.public_key, mallory_ids,
                               Kind.REQUEST, os.urandom(20), Flags.NONE, store,
                               recipient=victim.node_id)
        assert victim.storage.values(signed.dht_key) == []
        answers, reply = await tap.send_then(forgeries, genuine, victim)
        assert answers == [], "the victim answered a forged session datagram"
        assert victim.stats.dropped["bad_mac"] == 2
        assert victim.stats.dropped["no_session"] == 1
        # mallory's own session datagram is genuine: it is answered (under her session, so
        # only she can read it as authentic) and the record is stored
        assert reply[4] == SESSION_REQUEST + 1
        assert [s.wire for s in victim.storage.values(signed.dht_key)] == [signed.wire]
        with pytest.raises(EnvelopeError, match="no_session"):
            open_datagram(reply)  # not signed: a socket without the session cannot check it
    finally:
        stop([victim, honest, mallory_node], tap)

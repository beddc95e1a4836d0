"""Sans-IO parts of issue 12's DHT defences: the cookie gate, the replay cache's bound, and the
library's transparent cookie retry."""

from __future__ import annotations

from overlay.core import records
from overlay.core.addresses import network_key
from overlay.core.identity import Identity
from overlay.dht import DHTConfig, DHTNode
from overlay.dht.amplification import COOKIE_ROTATE_S, AddressGate
from overlay.dht.envelope import ANY_RECIPIENT, Flags, Kind, new_msg_id, open_datagram, seal
from overlay.dht.replay import ReplayGuard
from tests.helpers.netutil import loopback_ips, network_config, node_identity
from tests.helpers.shards import hosts_in_one_shard

ME = Identity.generate()
PEER = Identity.generate()
ADDR = ("127.0.0.5", 4000)


def test_cookie_is_bound_to_address_and_key_and_lives_two_rotations():
    gate = AddressGate(now=0.0)
    cookie = gate.cookie(ADDR, PEER.public_key, now=1.0)
    assert not gate.check_cookie(cookie, ("127.0.0.6", 4000), PEER.public_key, 1.0)
    assert not gate.check_cookie(cookie, ADDR, ME.public_key, 1.0)
    assert not gate.is_proven(ADDR, 1.0)
    assert gate.check_cookie(cookie, ADDR, PEER.public_key, COOKIE_ROTATE_S + 1)
    assert gate.is_proven(ADDR, COOKIE_ROTATE_S + 1)
    assert not AddressGate(0.0).check_cookie(cookie, ADDR, PEER.public_key, 1.0)
    gate.cookie(ADDR, PEER.public_key, 2 * COOKIE_ROTATE_S + 2)  # rotated twice since
    assert not gate.check_cookie(cookie, ADDR, PEER.public_key, 2 * COOKIE_ROTATE_S + 2)


def test_proven_addresses_are_bounded():
    gate = AddressGate(0.0, max_proven=2)
    for port in (1, 2, 3):
        gate.prove(("127.0.0.1", port), 0.0)
    assert [gate.is_proven(("127.0.0.1", p), 1.0) for p in (1, 2, 3)] == [False, True, True]
    assert network_key("10.1.2.3") == network_key("10.1.2.200") != network_key("10.1.3.3")


def envelope(now: float, recipient: bytes, method: str = "ping"):
    return open_datagram(seal(PEER, Kind.REQUEST, new_msg_id(), Flags.NONE, [method, []],
                              recipient=recipient, now=now))


def test_replay_cache_never_lets_a_replay_through_when_full():
    guard = ReplayGuard(ME.node_id, window_s=60, max_seen=3)
    now = 1_000_000.0
    first = envelope(now - 10, ME.node_id)
    assert guard.check(first, "ping", now) is None
    for i in range(3):  # a flood, stamped later, pushes `first` out of the cache
        assert guard.check(envelope(now + i, ME.node_id), "ping", now) is None
    assert len(guard) == 3
    assert guard.check(first, "ping", now) == "stale"  # not served again
    # the window narrows from its old end only: newer honest requests still pass
    assert guard.check(envelope(now + 5, ME.node_id), "ping", now) is None
    assert guard.check(envelope(now + 6, ANY_RECIPIENT, "store"), "store", now) \
        == "any_recipient"
    assert guard.check(envelope(now + 6, ANY_RECIPIENT), "ping", now) is None
    assert guard.check(envelope(now + 7, PEER.node_id), "ping", now) == "wrong_recipient"
    assert guard.check(envelope(now + 61, ME.node_id), "ping", now) == "stale"
    assert guard.check(envelope(now - 61, ME.node_id), "ping", now) == "stale"


async def test_a_new_requester_gets_the_whole_answer_after_one_cookie_round_trip():
    ips = loopback_ips(2)
    holder = DHTNode(node_identity(network_config()), network_config())
    reader = DHTNode(Identity.generate(), DHTConfig(refresh_interval_s=3600, client=True))
    await holder.start(ips[0], 0)
    await reader.start(ips[1], 0)
    try:
        recs = [records.supernode(Identity.generate(), host, 4000, seq=1)
                for host in hosts_in_one_shard(48, last_octet=1)]
        for signed in recs:
            holder.storage.put(signed.dht_key, signed.wire)
        reply = await reader.call(holder.address, "find_value", recs[0].dht_key,
                                  node_id=holder.node_id)
        assert len(reply["values"]) == 48
        assert reader.stats.requests_out["cookie_retry"] == 1
        assert holder.stats.dropped["truncated_unproven"] == 1
        await reader.call(holder.address, "find_value", recs[0].dht_key,
                          node_id=holder.node_id)
        assert reader.stats.requests_out["cookie_retry"] == 1  # the address is proven now
    finally:
        holder.stop()
        reader.stop()

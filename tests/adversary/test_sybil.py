"""Sybils in the DHT, attacked (issue 12, Sybil resistance).

The attacker has only what an attacker has: keys she generates herself (ground cheaply for
where their node id falls), DHT nodes of her own (this library, real UDP sockets on
loopback) on a few addresses of ONE /24, records she signs herself, and the documented DHT
methods. The network under attack is honest DHT nodes, each on its own loopback address.
What is asserted is what a user (or the node under attack) would notice.

* (a) free ids: a node whose id fails the network's id puzzle never enters an honest node's
  routing table, and its ``store`` is refused.
* (b) 5 addresses in one /24 cannot place 20 ids (puzzle-valid ones) around a key in a
  victim's routing table: they stay a minority of the victim's k closest to the key.
* (c) 20 puzzle-valid Sybils from one /24, placed next to alice's name key, holding records
  for "alice" signed by mallory and answering lookups with each other as contacts: a name
  lookup still answers alice's key.
* (d) contacts listed in responses are checked: one Sybil next to the key lists 20 free ids
  (ground next to the key, all in one /24, each a live node holding mallory's records); a
  name lookup still answers alice's key, and the free ids are never asked.

The puzzle rule (docs/ARCHITECTURE.md, DHT datagram): a node id is valid when SHA-256(id)
starts with ``id_puzzle_bits`` zero bits, a network constant in ``DHTConfig``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht import DHTNode
from overlay.dht.names import name_owner
from tests.helpers.netutil import Network, wait_for

K = 20
NEAR_BITS = 8  # an attacker id shares this many leading bits with the target key


def puzzle_bits(node: DHTNode) -> int:
    """The network's id puzzle difficulty (0: the code under test has no puzzle yet)."""
    return int(getattr(node.config, "id_puzzle_bits", 0))


def leading_zero_bits(data: bytes) -> int:
    value = int.from_bytes(data, "big")
    return len(data) * 8 - value.bit_length()


def puzzle_ok(node_id: bytes, bits: int) -> bool:
    return leading_zero_bits(hashlib.sha256(node_id).digest()) >= bits


def grind(accept: Callable[[bytes], bool]) -> Identity:
    """Key generation until the node id is one the attacker wants (a few thousand tries)."""
    while True:
        identity = Identity.generate()
        if accept(identity.node_id):
            return identity


def near(key: bytes, node_id: bytes) -> bool:
    distance = int.from_bytes(node_id, "big") ^ int.from_bytes(key, "big")
    return distance >> (160 - NEAR_BITS) == 0


def free_id_near(key: bytes) -> Identity:
    """An id next to ``key`` that fails the puzzle at any difficulty (its hash starts with 1)."""
    return grind(lambda i: near(key, i) and hashlib.sha256(i).digest()[0] & 0x80 != 0)


def valid_id_near(key: bytes, bits: int) -> Identity:
    return grind(lambda i: near(key, i) and puzzle_ok(i, bits))


def attacker_subnet() -> str:
    """One /24 outside the honest networks' 127.2-251.x.y range."""
    return f"127.{252 + secrets.randbelow(3)}.{secrets.randbelow(256)}"


async def sybil_nodes(identities: list[Identity], subnet: str, config: Any,
                      *held: records.SignedRecord) -> list[DHTNode]:
    """The attacker's nodes: 4 per address on 127.S.1..5, holding ``held`` already."""
    nodes = []
    for i, identity in enumerate(identities):
        node = DHTNode(identity, config)
        for signed in held:
            node.store_local(signed.wire, signed.dht_key)
        await node.start(f"{subnet}.{1 + i // 4}", 0)
        nodes.append(node)
    return nodes


def answer_with(node: DHTNode, contacts: list[DHTNode]) -> None:
    """Make ``node`` list only ``contacts`` in its find_node / find_value answers."""
    listed = [[c.node_id, *c.address] for c in contacts if c is not node][:K]
    node._proto._neighbors = lambda sender, key: listed


def mallory_claim(mallory: Identity) -> records.SignedRecord:
    return records.name_claim(mallory, "alice", seq=int(time.time() * 1000))


def stop_all(*groups: list[DHTNode]) -> None:
    for group in groups:
        for node in group:
            node.stop()


async def test_a_free_id_never_enters_a_routing_table_and_cannot_store():
    net = await Network(6).start()
    bits = puzzle_bits(net.bootstrap)
    subnet = attacker_subnet()
    key = records.user_key("alice")
    free = (await sybil_nodes([free_id_near(key)], subnet, net.config))[0]
    control = (await sybil_nodes([valid_id_near(key, bits)], attacker_subnet(), net.config))[0]
    try:
        await control.bootstrap([net.bootstrap.address])
        await free.bootstrap([net.bootstrap.address])
        # the control node (a valid id, the same path in) is admitted: the free one had its chance
        await wait_for(lambda: net.bootstrap.knows(control.node_id))
        await wait_for(lambda: not net.bootstrap._proto._verifying)
        honest = [net.bootstrap, *net.nodes]
        assert not any(n.knows(free.node_id) for n in honest), "a free id was admitted"
        reply = await free.call(net.bootstrap.address, "store", key,
                                mallory_claim(Identity.generate()).wire,
                                node_id=net.bootstrap.node_id)
        assert reply.get("ok") is False, f"a free id's store was taken: {reply}"
    finally:
        stop_all([free, control])
        net.stop()


async def test_one_subnet_cannot_place_twenty_ids_around_a_key():
    net = await Network(10).start()
    bits = puzzle_bits(net.bootstrap)
    key = records.user_key("alice")
    victim = net.nodes[0]
    sybils = await sybil_nodes([valid_id_near(key, bits) for _ in range(K)], attacker_subnet(),
                               net.config)
    try:
        for sybil in sybils:
            await sybil.bootstrap([victim.address])
        # every Sybil asked the victim, and the victim checked each one back (a ping)
        await wait_for(lambda: all(s.stats.requests_in["ping"] >= 1 for s in sybils))
        await wait_for(lambda: not victim._proto._verifying)
        target = int.from_bytes(key, "big")
        closest = sorted(victim.contacts(),
                         key=lambda c: int.from_bytes(c.node_id, "big") ^ target)[:K]
        ids = {s.node_id for s in sybils}
        placed = sum(1 for c in closest if c.node_id in ids)
        assert placed <= K // 2, (
            f"{placed} of the victim's {len(closest)} closest contacts to the key are Sybils "
            f"from one /24")
    finally:
        stop_all(sybils)
        net.stop()


async def test_sybils_next_to_a_name_do_not_win_its_lookup():
    net = await Network(30).start()
    bits = puzzle_bits(net.bootstrap)
    alice, mallory = Identity.generate(), Identity.generate()
    key = records.user_key("alice")
    claim = records.name_claim(alice, "alice", seq=1)
    await net.nodes[0].put(claim)
    forged = mallory_claim(mallory)
    sybils = await sybil_nodes([valid_id_near(key, bits) for _ in range(K)], attacker_subnet(),
                               net.config, forged)
    honest = [net.bootstrap, *net.nodes]
    try:
        for sybil in sybils:
            answer_with(sybil, sybils)
        for i, sybil in enumerate(sybils):
            await sybil.bootstrap([honest[i % len(honest)].address])
        await wait_for(lambda: all(s.stats.requests_in["ping"] >= 1 for s in sybils))
        reader = net.nodes[-1]
        owner = await name_owner(reader, "alice")
        assert owner.key == alice.public_key, (
            f"the lookup answered {owner.key.hex() if owner.key else None} "
            f"(mallory {mallory.public_key.hex()[:16]}, conflict={owner.conflict})")
    finally:
        stop_all(sybils)
        net.stop()


async def test_contacts_listed_in_a_response_are_checked():
    net = await Network(30).start()
    bits = puzzle_bits(net.bootstrap)
    alice, mallory = Identity.generate(), Identity.generate()
    key = records.user_key("alice")
    await net.nodes[0].put(records.name_claim(alice, "alice", seq=1))
    forged = mallory_claim(mallory)
    subnet = attacker_subnet()
    lister = (await sybil_nodes([valid_id_near(key, bits)], attacker_subnet(), net.config,
                                forged))[0]
    free = await sybil_nodes([free_id_near(key) for _ in range(K)], subnet, net.config, forged)
    try:
        answer_with(lister, free)
        for node in free:
            answer_with(node, free)
        await lister.bootstrap([net.bootstrap.address])
        reader = net.nodes[-1]
        await wait_for(lambda: lister.stats.requests_in["ping"] >= 1)  # someone checked it
        owner = await name_owner(reader, "alice")
        asked = sum(n.stats.requests_in["find_value"] for n in free)
        assert owner.key == alice.public_key, (
            f"the lookup answered {owner.key.hex() if owner.key else None} "
            f"(mallory {mallory.public_key.hex()[:16]}); free ids asked {asked} times")
        assert asked == 0, f"contacts with free ids were asked {asked} times"
    finally:
        stop_all(free, [lister])
        net.stop()

"""The Sybil limits' parts: the id puzzle, routing-table diversity, lookup candidates, disjoint
paths, and admission only after an answer (the attacks themselves: tests/adversary/test_sybil)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from kademlia.node import Node

from overlay.core import records
from overlay.core.identity import Identity, KeyFileError, id_puzzle_ok
from overlay.dht import DHTConfig, DHTNode
from overlay.dht.crawling import LookupShare
from overlay.dht.disjoint import DisjointValueLookup
from overlay.dht.routing import OverlayRoutingTable, TableLimits
from tests.helpers.netutil import Network, loopback_ips, network_config, node_identity, wait_for


def test_the_puzzle_is_leading_zero_bits_of_the_ids_hash():
    for _ in range(200):
        node_id = os.urandom(20)
        first = hashlib.sha256(node_id).digest()[0]
        assert id_puzzle_ok(node_id, 1) == (first < 0x80)
        assert id_puzzle_ok(node_id, 8) == (first == 0)
        assert id_puzzle_ok(node_id, 0)
    identity = Identity.generate_node(10)
    assert hashlib.sha256(identity.node_id).digest()[0] == 0
    assert hashlib.sha256(identity.node_id).digest()[1] < 0x40


def test_the_network_constant_costs_work():
    # ~65,536 key generations per id: tools/bench/puzzle.py measures ~1 s on one core
    assert DHTConfig().id_puzzle_bits >= 16


def test_a_public_key_file_whose_id_fails_the_puzzle_is_refused(tmp_path: Path):
    path = tmp_path / "node.key"
    weak = Identity.generate()
    while id_puzzle_ok(weak.node_id, 1):
        weak = Identity.generate()
    weak.save(path)
    assert Identity.load_or_create(path).public_key == weak.public_key  # a client's: fine
    with pytest.raises(KeyFileError, match="id puzzle"):
        Identity.load_or_create(path, puzzle_bits=1)
    fresh = Identity.load_or_create(tmp_path / "new.key", puzzle_bits=6)
    assert id_puzzle_ok(fresh.node_id, 6)
    assert Identity.load(tmp_path / "new.key").public_key == fresh.public_key


class NoPing:
    async def call_ping(self, node: Node) -> tuple[bool, None]:
        return (False, None)


def valid_node(bits: int, ip: str, port: int, near: Node | None = None) -> Node:
    while True:
        identity = Identity.generate_node(bits)
        node = Node(identity.node_id, ip, port)
        # "near": the same bucket of the table of ``near`` (top bit differs from its id)
        if near is None or (node.long_id ^ near.long_id).bit_length() == 160:
            return node


def test_a_table_takes_two_per_slash24_per_bucket_and_ten_in_all():
    me = Node(os.urandom(20))
    table = OverlayRoutingTable(NoPing(), 20, me, TableLimits(4, 4, 2, 10))
    free = Node(os.urandom(20), "198.51.100.1", 1)
    while id_puzzle_ok(free.id, 4):
        free = Node(os.urandom(20), "198.51.100.1", 1)
    assert table.add_contact(free) is False and table.refused["bad_node_id"] == 1
    # one bucket (the far half): 2 of 198.51.100.0/24, whatever their addresses
    added = [table.add_contact(valid_node(4, f"198.51.100.{i}", 4000, me)) for i in range(1, 6)]
    assert added == [True, True, False, False, False]
    assert table.refused["per_subnet_bucket"] == 3
    # in all: 10 per /24, over every bucket
    taken = 2
    for i in range(200):
        if table.add_contact(valid_node(4, f"198.51.100.{10 + i % 200}", 4000 + i)):
            taken += 1
    assert taken == 10 and table.refused["per_subnet"] > 0
    # another /24 is not affected
    assert table.add_contact(valid_node(4, "203.0.113.1", 4000, me))


def test_lookup_candidates_need_a_valid_id_and_at_most_ten_per_slash24():
    share = LookupShare(puzzle_bits=4, max_per_subnet=10)
    nodes = [valid_node(4, f"198.51.100.{i}", 4000) for i in range(1, 15)]
    assert [share.admit(n) for n in nodes] == [True] * 10 + [False] * 4
    assert share.admit(nodes[0])  # already a candidate
    free = Node(os.urandom(20), "203.0.113.1", 1)
    while id_puzzle_ok(free.id, 4):
        free = Node(os.urandom(20), "203.0.113.1", 1)
    assert not share.admit(free) and share.refused["bad_node_id"] == 1
    assert share.claim(nodes[0].id) and not share.claim(nodes[0].id)


async def test_name_lookup_paths_are_disjoint_and_tallied_together():
    net = await Network(40).start()
    try:
        alice = Identity.generate()
        claim = records.name_claim(alice, "alice", seq=1)
        await net.nodes[0].put(claim)
        reader = net.nodes[-1]
        proto = reader._proto
        nearest = proto.router.find_neighbors(Node(claim.dht_key))
        lookup = DisjointValueLookup(proto, Node(claim.dht_key), nearest, 20, 3, 3,
                                     lambda w: records.verify(w), paths=3)
        asked_by_path: list[set[bytes]] = [set() for _ in lookup.paths]
        for i, path in enumerate(lookup.paths):
            original = path._accept

            def accept(peer: Node, payload: object, i: int = i, original=original) -> bool:
                asked_by_path[i].add(peer.id)
                return bool(original(peer, payload))

            path._accept = accept
        found = await lookup.find()
        assert [s.wire for s in found] == [claim.wire]
        # the paths share the lookup's request slots: the fast path may end before the last
        # path asked anyone, never before two did
        assert sum(1 for asked in asked_by_path if asked) >= 2, "one path asked everyone"
        for i in range(3):
            for j in range(i + 1, 3):
                assert not asked_by_path[i] & asked_by_path[j], "two paths asked one node"
        # unanimous holders of enough networks (the fast path), tallied over all paths
        assert len(lookup.tally.name_networks) >= proto.config.name_uncontested_networks
    finally:
        net.stop()


async def test_a_contact_listed_in_a_response_enters_the_table_only_after_it_answers():
    config = network_config()
    reader_ip, lister_ip, dead_ip = loopback_ips(3)
    reader, lister = DHTNode(node_identity(config), config), DHTNode(node_identity(config), config)
    dead = node_identity(config)  # a valid id at an address where nothing answers
    await reader.start(reader_ip, 0)
    await lister.start(lister_ip, 0)
    lister._proto._neighbors = lambda sender, key: [[dead.node_id, dead_ip, 9]]
    try:
        await reader.bootstrap([lister.address])
        await wait_for(lambda: reader.knows(lister.node_id))
        await reader.closest(dead.node_id)  # the lookup asks the listed contact: no answer
        assert reader.stats.timeouts >= 1
        assert not reader.knows(dead.node_id)
    finally:
        reader.stop()
        lister.stop()


def test_a_public_node_refuses_a_key_whose_id_fails_the_puzzle():
    from overlay.node.daemon import NodeDaemon, NodeOptions
    from overlay.node.errors import NodeError

    weak = Identity.generate()
    while id_puzzle_ok(weak.node_id, DHTConfig().id_puzzle_bits):
        weak = Identity.generate()
    with pytest.raises(NodeError, match="id puzzle"):
        NodeDaemon(NodeOptions(listen=("127.0.0.1", 0)), weak)

"""Each confirmed defect of the PyPI ``kademlia`` package: the check fails on the stock class
and passes on our subclass."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest
from kademlia.crawling import NodeSpiderCrawl, ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import KBucket, RoutingTable
from kademlia.storage import ForgetfulStorage

from overlay.core import records
from overlay.core.identity import Identity, node_id_for
from overlay.dht import DHTConfig, DHTNode, DHTStats
from overlay.dht.crawling import OverlayValueCrawl
from overlay.dht.envelope import ANY_RECIPIENT, Flags, Kind, new_msg_id, open_datagram, seal
from overlay.dht.routing import OverlayRoutingTable, TableLimits, bucket_depth
from overlay.dht.storage import RecordStorage
from tests.helpers.netutil import Network, loopback_ips, network_config, node_identity, wait_for


class NoPingProtocolFake:
    """Stands in for the network when a full bucket asks to ping its head."""

    async def call_ping(self, node):
        return (False, None)


def fill(table: RoutingTable, count: int, rng: random.Random) -> list[Node]:
    nodes = []
    for i in range(count):
        node = Node(rng.randbytes(20), f"127.0.{i // 250}.{i % 250 + 1}", 4000)
        table.add_contact(node)
        nodes.append(node)
    return nodes


def short_answers(table: RoutingTable, rng: random.Random, trials: int = 300) -> int:
    contacts = [n for b in table.buckets for n in b.get_nodes()]
    expected = min(table.ksize, len(contacts))
    short = 0
    for _ in range(trials):
        target = Node(rng.randbytes(20))
        found = table.find_neighbors(target)
        best = sorted(contacts, key=target.distance_to)[:expected]
        if len(found) < expected or {n.id for n in found} != {n.id for n in best}:
            short += 1
    return short


async def test_find_neighbors_returns_the_k_closest():
    rng = random.Random(1)
    me = Node(rng.randbytes(20))
    stock = RoutingTable(NoPingProtocolFake(), 20, me)
    ours = OverlayRoutingTable(NoPingProtocolFake(), 20, me,  # no Sybil limits: traversal only
                               TableLimits(0, 10**6, 10**6, 10**6))
    fill(stock, 120, random.Random(2))
    fill(ours, 120, random.Random(2))
    assert short_answers(stock, random.Random(3)) > 0  # the defect
    assert short_answers(ours, random.Random(3)) == 0


def test_find_neighbors_is_exact_with_exclusions_any_k_and_after_removals():
    rng = random.Random(7)
    for size in (3, 25, 300):
        me = Node(rng.randbytes(20))
        table = OverlayRoutingTable(NoPingProtocolFake(), 20, me,
                                    TableLimits(0, 10**6, 10**6, 10**6))
        contacts = fill(table, size, rng)
        for gone in contacts[: size // 5]:
            table.remove_contact(gone)
        members = table.contacts()
        for _ in range(200):
            # a random key, or a member's own id (it is never its own neighbour)
            target = Node(rng.choice(members).id if rng.random() < 0.3 else rng.randbytes(20))
            asker = rng.choice(members) if rng.random() < 0.5 else None
            k = rng.choice((1, 3, 20, 45))
            expected = [n.id for n in sorted(members, key=target.distance_to)
                        if n.id != target.id
                        and (asker is None or (n.ip, n.port) != (asker.ip, asker.port))][:k]
            assert [n.id for n in table.find_neighbors(target, k, exclude=asker)] == expected


async def test_find_neighbors_stays_exact_while_contacts_arrive_and_leave():
    # the index is updated in place when a contact enters a bucket: queried between adds
    # (buckets splitting, full buckets sending contacts to their replacement cache, removals
    # promoting replacements), it must answer as a table ranked from scratch
    rng = random.Random(11)
    me = Node(rng.randbytes(20))
    table = OverlayRoutingTable(NoPingProtocolFake(), 4, me,  # small buckets: they fill
                                TableLimits(0, 10**6, 10**6, 10**6))
    added: list[Node] = []
    to_replacements = 0
    for i in range(400):
        node = Node(rng.randbytes(20), f"127.1.{i // 250}.{i % 250 + 1}", 4000)
        table.add_contact(node)
        added.append(node)
        to_replacements += table.find_contact(node.id) is None
        if i % 37 == 5:
            table.remove_contact(rng.choice(added))
        members = table.contacts()
        assert sorted(n.id for n in members) == sorted(table._index().by_id)
        target = Node(rng.randbytes(20))
        expected = [n.id for n in sorted(members, key=target.distance_to)][:20]
        assert [n.id for n in table.find_neighbors(target, 20)] == expected
        assert all(table.find_contact(n.id) is n for n in members)
    assert to_replacements > 50  # full buckets were exercised


def test_bucket_depth_is_kademlias():
    rng = random.Random(12)
    for size in (1, 2, 5, 20):
        for prefix_bits in (0, 3, 17, 40):
            bucket = KBucket(0, 2**160, 20)
            base = rng.getrandbits(160)
            for _ in range(size):
                low = rng.getrandbits(160 - prefix_bits)
                long_id = (base >> (160 - prefix_bits) << (160 - prefix_bits)) | low
                bucket.add_node(Node(long_id.to_bytes(20, "big")))
            assert bucket_depth(bucket) == bucket.depth()


def test_subnet_counts_stay_exact_when_adding_splits_a_bucket():
    # kademlia adds the node again after a split: it must be counted once
    rng = random.Random(8)
    table = OverlayRoutingTable(NoPingProtocolFake(), 20, Node(rng.randbytes(20)),
                                TableLimits(0, 10**6, 10**6, 10**6))
    fill(table, 300, rng)
    assert len(table.buckets) > 1
    assert sum(table.per_ip.values()) == len(table) == sum(table.per_subnet.values())


class SpyStockProtocol(KademliaProtocol):
    """The stock protocol, recording the stores welcome_if_new decides to send."""

    def __init__(self, *args):
        super().__init__(*args)
        self.stores = []

    async def call_store(self, node_to_ask, key, value):
        self.stores.append((node_to_ask.id, key))
        return (True, True)


def identity_near(key: bytes, bits: int) -> Identity:
    """A key whose node id shares ``bits`` leading bits with ``key`` and solves the test
    networks' id puzzle."""
    while True:
        identity = node_identity(network_config())
        distance = int.from_bytes(identity.node_id, "big") ^ int.from_bytes(key, "big")
        if distance >> (160 - bits) == 0:
            return identity


async def test_new_node_close_to_a_key_receives_it():
    alice = Identity.generate()
    signed = records.presence(alice, "alice", "phone", seq=1, online=False)
    key = signed.dht_key
    newcomer = identity_near(key, 10)

    # stock: welcome_if_new hashes the key again, so the close newcomer gets nothing
    # the holder is the closest node to the key it holds; one of its contacts happens to sit
    # next to sha1(key), the point the stock code wrongly measures from
    from kademlia.utils import digest

    holder = Node(bytes(key[:19]) + bytes([key[19] ^ 1]), "127.0.0.1", 1)
    stock_storage = ForgetfulStorage()
    stock_storage[key] = signed.wire
    spy = SpyStockProtocol(holder, stock_storage, 20)
    rng = random.Random(5)
    near_digest = digest(key)[:19] + bytes([digest(key)[19] ^ 1])
    for i, node_id in enumerate([near_digest] + [rng.randbytes(20) for _ in range(19)]):
        spy.router.add_contact(Node(node_id, "127.0.1.1", 100 + i))
    spy.welcome_if_new(Node(newcomer.node_id, "127.0.0.2", 2))
    await asyncio.sleep(0)
    assert spy.stores == []  # the defect

    # ours, over the network: a node holding the key hands it to the newcomer once it answers
    ips = loopback_ips(2)
    config = network_config()
    old = DHTNode(node_identity(config), config)
    await old.start(ips[0], 0)
    new = DHTNode(newcomer, config)
    await new.start(ips[1], 0)
    try:
        old.store_local(signed.wire, key)
        await new.bootstrap([old.address])
        await wait_for(lambda: [s.wire for s in new.storage.values(key)] == [signed.wire])
    finally:
        old.stop()
        new.stop()


async def test_a_node_joining_a_small_network_receives_keys_it_is_farther_from():
    """Fewer nodes than k: every node is among the k closest of every key, so one that joins
    after a record was stored gets it from the closest holder even when it is farther from
    the key than that holder (it had to wait for the publisher's next republish)."""
    alice = Identity.generate()
    signed = records.presence(alice, "alice", "phone", seq=1, online=False)
    key = signed.dht_key
    key_long = int.from_bytes(key, "big")
    config = network_config()
    while True:
        holder_identity = node_identity(config)
        newcomer = node_identity(config)
        holder_d = int.from_bytes(holder_identity.node_id, "big") ^ key_long
        if holder_d < int.from_bytes(newcomer.node_id, "big") ^ key_long:
            break
    ips = loopback_ips(2)
    old = DHTNode(holder_identity, config)
    await old.start(ips[0], 0)
    new = DHTNode(newcomer, config)
    await new.start(ips[1], 0)
    try:
        old.store_local(signed.wire, key)
        await new.bootstrap([old.address])
        await wait_for(lambda: [s.wire for s in new.storage.values(key)] == [signed.wire])
    finally:
        old.stop()
        new.stop()


async def test_a_node_gets_a_record_stored_after_it_joined_from_a_holder_meeting_it_later():
    """Three nodes: x joins through the bootstrap b; then y, holding a record that b holds
    too (b closer to its key than y), joins. b met x before it held the record, so it hands
    x nothing; y meets x as new and hands it over although b is the closer holder (fewer
    nodes than k: each holder hands every key to a node it meets as new). Before, x held the
    record only at the publisher's next republish: a supernode that started while another
    was starting did not list it."""
    alice = Identity.generate()
    signed = records.presence(alice, "alice", "phone", seq=1, online=False)
    key_long = int.from_bytes(signed.dht_key, "big")
    config = network_config()
    while True:
        b_id, x_id, y_id = (node_identity(config) for _ in range(3))
        if (int.from_bytes(b_id.node_id, "big") ^ key_long
                < int.from_bytes(y_id.node_id, "big") ^ key_long):
            break
    ips = loopback_ips(3)
    b, x, y = DHTNode(b_id, config), DHTNode(x_id, config), DHTNode(y_id, config)
    for node, ip in zip((b, x, y), ips, strict=True):
        await node.start(ip, 0)
    try:
        await x.bootstrap([b.address])
        await wait_for(lambda: b._proto.router.find_contact(x.node_id) is not None)
        b.store_local(signed.wire, signed.dht_key)
        y.store_local(signed.wire, signed.dht_key)
        await y.bootstrap([b.address])
        await wait_for(lambda: [s.wire for s in x.storage.values(signed.dht_key)]
                       == [signed.wire])
    finally:
        for node in (b, x, y):
            node.stop()


async def test_welcome_does_not_scan_routing_table_for_far_keys():
    """In a table of k contacts or more, keys the newcomer is farther from than we are cost
    one bit test, no table scan."""
    net = await Network(3).start()
    try:
        proto = net.nodes[0]._proto
        for i in range(proto.router.ksize):
            proto.router.add_contact(Node(node_identity(net.config).node_id, f"127.{i}.9.1", 9))
        assert len(proto.router) >= proto.router.ksize
        calls = []
        original = proto.router.find_neighbors
        proto.router.find_neighbors = lambda *a, **k: calls.append(a) or original(*a, **k)
        me = int.from_bytes(net.nodes[0].node_id, "big")
        for _ in range(200):
            user = Identity.generate()
            rec = records.presence(user, f"u{os.urandom(4).hex()}", "d", seq=1, online=False)
            proto.storage.put(rec.dht_key, rec.wire)
        # a newcomer differing from us in the top bit: only keys on its side need a check
        far = Node(((me ^ (1 << 159)).to_bytes(20, "big")), "127.0.0.9", 9)
        on_its_side = [k for k in proto.storage.keys()
                       if (int.from_bytes(k, "big") >> 159) == (far.long_id >> 159)]
        proto._keys_to_hand_over(far)
        assert len(calls) == len(on_its_side) < 200
    finally:
        net.stop()


class RefusingStorage(ForgetfulStorage):
    """A stock node whose storage refuses every value (a full disk, say)."""

    def __setitem__(self, key, value):
        raise OSError("no space left")


async def test_set_digest_counts_real_stores_and_survives_dead_contacts():
    a_ip, b_ip = loopback_ips(2)
    stock_a, stock_b = Server(), Server(storage=RefusingStorage())
    stock_a.protocol_class = KademliaProtocol
    await stock_a.listen(0, interface=a_ip)
    await stock_b.listen(0, interface=b_ip)
    for s in (stock_a, stock_b):
        s.protocol._wait_timeout = 0.5
    try:
        await stock_a.bootstrap([stock_b.transport.get_extra_info("sockname")[:2]])
        far_key = bytes(x ^ 0xFF for x in stock_a.node.id)  # stock_a is not among the closest
        assert await stock_a.set_digest(far_key, b"v") is True  # the defect: nothing stored
        b_addr = stock_b.transport.get_extra_info("sockname")[:2]
        stock_b.stop()
        stock_a.protocol.router.add_contact(Node(stock_b.node.id, *b_addr))  # known, now dead
        with pytest.raises(ValueError):  # the defect: max([]) once every contact is dead
            await stock_a.set_digest(far_key, b"v")
    finally:
        stock_a.stop()
        stock_b.stop()

    net = await Network(3).start()
    try:
        alice = Identity.generate()
        await net.nodes[0].put(records.presence(alice, "alice", "p", seq=5, online=False))
        stale = records.presence(alice, "alice", "p", seq=4, online=False)
        result = await net.nodes[1]._server.set_digest(stale.dht_key, stale.wire)
        assert result.stored == 0 and result.refused["stale_sequence"] >= 3
        for node in [net.bootstrap, *net.nodes[1:]]:
            node.stop()
        fresh = records.presence(alice, "alice", "p", seq=6, online=False)
        result = await net.nodes[0]._server.set_digest(fresh.dht_key, fresh.wire)
        assert result.stored == 1  # only itself; no exception
    finally:
        net.stop()


def test_malformed_find_responses_raise_in_stock_crawl_but_not_ours():
    target = Node(os.urandom(20))
    peer = Node(os.urandom(20), "127.0.0.1", 1)
    for bad in ({"value": [1, 2]}, {"x": 1}):
        crawl = ValueSpiderCrawl(None, target, [peer], 20, 3)
        with pytest.raises((KeyError, TypeError)):  # the defect
            asyncio.run(crawl._nodes_found({peer.id: (True, bad)}))

    class Proto:
        source_node = Node(os.urandom(20))
        config = network_config()
        stats = DHTStats()

    ours = OverlayValueCrawl(Proto(), target, [peer], 20, 3, 3, records.verify)
    for bad in ({"value": [1, 2]}, {"x": 1}, {"values": 7, "nodes": []},
                {"values": [], "nodes": [[b"short", "127.0.0.1", 1]]},
                {"values": [b"junk"], "nodes": [[os.urandom(20), "not-an-ip", 1]]}):
        assert ours._accept(peer, bad) is False
    assert ours.tally.found == {}


async def test_junk_datagrams_are_dropped_and_counted():
    # stock: the datagram handler raises on junk
    stock = KademliaProtocol(Node(os.urandom(20)), ForgetfulStorage(), 20)
    with pytest.raises(Exception):  # noqa: B017 - any exception is the defect
        await stock._solve_datagram(b"\x00" + os.urandom(20) + b"\xc1\xc1\xc1", ("127.0.0.1", 1))

    net = await Network(2).start()
    try:
        target = net.nodes[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((loopback_ips(1)[0], 0))
        junk = [b"", b"x", os.urandom(100), b"OVL2" + os.urandom(200), b"OVL2" + b"\x00" * 146,
                os.urandom(70_000)[:65_000]]
        for datagram in junk:
            sock.sendto(datagram, target.address)
        sock.close()
        await wait_for(lambda: sum(target.stats.dropped.values()) >= len(junk))
        alice = Identity.generate()
        await target.put(records.presence(alice, "alice", "p", seq=1, online=False))
        assert await net.nodes[1].get(records.user_key("alice"))
    finally:
        net.stop()


class SybilSocket(asyncio.DatagramProtocol):
    """One UDP socket speaking our protocol with many identities, answering every ping."""

    def __init__(self, identities):
        self.identities = {i.public_key: i for i in identities}
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        env = open_datagram(data)
        if env.kind is Kind.REQUEST:
            for identity in self.identities.values():
                self.transport.sendto(
                    seal(identity, Kind.RESPONSE, env.msg_id, Flags.NONE, {"pong": True},
                         recipient=node_id_for(env.sender_key)), addr)

    def hello_all(self, addr):
        for identity in self.identities.values():
            self.transport.sendto(
                seal(identity, Kind.REQUEST, new_msg_id(), Flags.NONE, ["ping", []],
                     recipient=ANY_RECIPIENT), addr)


async def test_one_socket_cannot_fill_a_victims_routing_table():
    net = await Network(6).start()
    victim = net.nodes[0]
    victim_long = int.from_bytes(victim.node_id, "big")
    sybils = [identity_near(victim.node_id, 6) for _ in range(19)]
    loop = asyncio.get_running_loop()
    transport, sybil = await loop.create_datagram_endpoint(
        lambda: SybilSocket(sybils), local_addr=(loopback_ips(1)[0], 0))
    try:
        sybil.hello_all(victim.address)
        await wait_for(lambda: victim.stats.requests_in["ping"] >= 19)
        await wait_for(lambda: any(victim.knows(s.node_id) for s in sybils), timeout=5)
        ids = {s.node_id for s in sybils}
        closest = sorted(victim.contacts(),
                         key=lambda c: int.from_bytes(c.node_id, "big") ^ victim_long)[:20]
        assert sum(c.node_id in ids for c in closest) == 1

        # the stock protocol lets every claimed id in
        stock = KademliaProtocol(Node(victim.node_id), ForgetfulStorage(), 20)
        for s in sybils:
            stock.rpc_ping(transport.get_extra_info("sockname")[:2], s.node_id)
        assert sum(1 for b in stock.router.buckets for _ in b.get_nodes()) == 19
    finally:
        transport.close()
        net.stop()


async def test_contact_is_evicted_after_several_failures_not_one():
    node = Node(node_identity(network_config()).node_id, "127.0.0.1", 9)
    stock = KademliaProtocol(Node(os.urandom(20)), ForgetfulStorage(), 20)
    stock.router.add_contact(node)
    stock.handle_call_response((False, None), node)
    assert stock.router.is_new_node(node)  # the defect: gone after one timeout

    net = await Network(2).start()
    try:
        proto = net.nodes[0]._proto
        proto.router.add_contact(node)
        for _ in range(proto.config.max_failures - 1):
            proto.handle_call_response((False, None), node)
        assert not proto.router.is_new_node(node)
        proto.handle_call_response((False, None), node)
        assert proto.router.is_new_node(node)
    finally:
        net.stop()


async def test_dead_contact_does_not_stall_a_lookup():
    """Ours finishes while the dead contact's request is still outstanding; stock waits it out."""
    net = await Network(8, DHTConfig(refresh_interval_s=3600, rpc_timeout_s=30,
                                     min_rpc_timeout_s=30)).start()
    try:
        alice = Identity.generate()
        signed = records.presence(alice, "alice", "p", seq=1, online=False)
        await net.nodes[2].put(signed)
        reader = net.nodes[0]
        key = signed.dht_key
        first_asked = reader._proto.router.find_neighbors(Node(key), k=3)
        dead = next(n for n in [net.bootstrap, *net.nodes[1:]] if n.node_id == first_asked[0].id)
        dead.stop()
        found = await reader.get(key)
        assert [s.wire for s in found] == [signed.wire]
        pending = reader._proto._pending.values()
        assert any(o.expected_id == dead.node_id for o in pending)
    finally:
        net.stop()

    ips = loopback_ips(3)
    a, b, c = Server(), Server(), Server()
    for s, ip in zip((a, b, c), ips, strict=True):
        await s.listen(0, interface=ip)
    a.protocol._wait_timeout = 1
    try:
        await a.bootstrap([b.transport.get_extra_info("sockname")[:2],
                           c.transport.get_extra_info("sockname")[:2]])
        b.stop()
        crawl = NodeSpiderCrawl(a.protocol, Node(b.node.id),
                                a.protocol.router.find_neighbors(Node(b.node.id)), 20, 3)
        await crawl.find()
        assert not a.protocol._outstanding  # the defect: the round waited for the timeout
    finally:
        for s in (a, b, c):
            s.stop()


def test_stock_storage_lets_old_values_win_and_never_expire_while_republished():
    stock = ForgetfulStorage(ttl=100)
    stock[b"k"] = b"new"
    stock[b"k"] = b"old"
    assert stock[b"k"] == b"old"  # the defect: last writer wins

    clock = [1_000_000.0]
    ours = RecordStorage(clock=lambda: clock[0])
    alice = Identity.generate()
    new = records.presence(alice, "alice", "p", seq=2, online=False, lifetime_s=60, now=clock[0])
    old = records.presence(alice, "alice", "p", seq=1, online=False, lifetime_s=60, now=clock[0])
    ours.put(new.dht_key, new.wire)
    with pytest.raises(records.StaleSequence):
        ours.put(old.dht_key, old.wire)
    clock[0] += 59
    ours.put(new.dht_key, new.wire)  # a holder handing it on again does not extend it
    clock[0] += 2
    assert ours.values(new.dht_key) == []


async def test_only_the_publisher_republishes():
    net = await Network(5).start()
    try:
        alice = Identity.generate()
        publisher = net.nodes[0]
        await publisher.put(records.presence(alice, "alice", "p", seq=1, online=False))
        holders = [n for n in net.nodes[1:] if n.storage.entry_count]
        assert holders
        for holder in holders:
            sent = holder.stats.requests_out["store"]
            await holder._server.republish()
            assert holder.stats.requests_out["store"] == sent
        sent = publisher.stats.requests_out["store"]
        await publisher._server.republish()
        assert publisher.stats.requests_out["store"] > sent
    finally:
        net.stop()


def test_node_ids_cannot_be_chosen():
    identity = Identity.generate()
    datagram = seal(identity, Kind.REQUEST, new_msg_id(), Flags.NONE, ["ping", []],
                    recipient=ANY_RECIPIENT)
    assert node_id_for(open_datagram(datagram).sender_key) == identity.node_id

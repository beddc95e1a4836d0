"""A bootstrap node and 24 DHT nodes on loopback storing and serving signed presence records."""

from __future__ import annotations

import asyncio
import random

from overlay.core import records
from overlay.core.identity import Identity
from tests.helpers.netutil import Network, network_config, wait_for

SUPERNODE = Identity.generate()


async def test_records_from_many_users_readable_everywhere_and_after_losing_a_quarter():
    net = await Network(24).start()
    try:
        assert all(n.routing_table_size >= 10 for n in net.nodes)
        users = {f"user{i}": Identity.generate() for i in range(6)}
        published: dict[str, dict[str, records.SignedRecord]] = {}
        rng = random.Random(7)
        for name, identity in users.items():
            published[name] = {}
            for device in ("phone", "laptop", "tablet")[: 1 + rng.randrange(3)]:
                signed = records.presence(
                    identity, name, device, seq=1, supernode_key=SUPERNODE.public_key,
                    supernode_host="198.18.0.10", supernode_port=4000,
                )
                result = await rng.choice(net.nodes).put(signed)
                assert result.stored >= 10
                published[name][device] = signed

        async def all_readable_from(readers):
            for reader in readers:
                for name, devices in published.items():
                    found = await reader.get(records.user_key(name))
                    assert {s.record.device: s.wire for s in found} == {
                        d: s.wire for d, s in devices.items()
                    }, (name, reader.address)

        await all_readable_from(net.nodes)

        victims = rng.sample(net.nodes, len(net.nodes) // 4)
        for node in victims:
            node.stop()
        survivors = [n for n in net.nodes if n not in victims]
        await all_readable_from(survivors)
    finally:
        net.stop()


async def test_newer_sequence_replaces_older_across_the_network():
    net = await Network(10).start()
    try:
        alice = Identity.generate()
        first = records.presence(alice, "alice", "phone", seq=1, online=False)
        await net.nodes[0].put(first)
        second = records.presence(alice, "alice", "phone", seq=2,
                                  supernode_key=SUPERNODE.public_key,
                                  supernode_host="198.18.0.11", supernode_port=4001)
        await net.nodes[5].put(second)
        for reader in net.nodes:
            found = await reader.get(records.user_key("alice"))
            assert [s.seq for s in found] == [2]
            assert found[0].record.online
    finally:
        net.stop()


async def test_lookup_of_unknown_name_returns_nothing():
    net = await Network(8).start()
    try:
        assert await net.nodes[3].get(records.user_key("nobody")) == []
    finally:
        net.stop()


async def test_a_put_no_other_node_took_reaches_it_once_it_is_back():
    """The only other node is away when the record is published: the publisher keeps it and
    retries with backoff, so the record reaches that node seconds after it returns instead of
    at the next republish (5 minutes)."""
    from overlay.dht import DHTNode
    from tests.helpers.netutil import loopback_ips, network_config, node_identity, wait_for

    config = network_config(replicate_retry_s=(0.2, 0.4, 0.8, 1.6, 3.2))
    ip_a, ip_b = loopback_ips(2)
    b_identity = node_identity(config)
    a, b = DHTNode(node_identity(config), config), DHTNode(b_identity, config)
    await b.start(ip_b, 0)
    b_port = b.address[1]
    await a.start(ip_a, 0)
    b_again = None
    try:
        assert await a.bootstrap([b.address]) == 1
        b.stop()
        alice = Identity.generate()
        signed = records.presence(alice, "alice", "phone", seq=1,
                                  supernode_key=SUPERNODE.public_key,
                                  supernode_host="198.18.0.10", supernode_port=4000)
        result = await a.put(signed)
        assert (result.stored, result.remote) == (1, 0)
        assert a.stats.puts_local_only == 1
        b_again = DHTNode(b_identity, config)  # the same node, back on its address
        await b_again.start(ip_b, b_port)
        await wait_for(lambda: any(s.wire == signed.wire for s in
                                   b_again.storage.values(records.user_key("alice"))),
                       timeout=10)
        await wait_for(lambda: a.stats.replication["replicated"] == 1, timeout=5)
    finally:
        a.stop()
        if b_again is not None:
            b_again.stop()


class DropFirstForwarder(asyncio.DatagramProtocol):
    """A real UDP socket between two nodes that loses the first datagram it is given, as a
    lossy link would, and forwards everything else both ways."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.server:
            if self.client is not None:
                self.transport.sendto(data, self.client)
            return
        self.client = addr
        if self.dropped == 0:
            self.dropped += 1
            return
        self.transport.sendto(data, self.server)


async def test_a_request_whose_datagram_was_lost_is_sent_again_and_answered():
    """One lost datagram on the way does not fail a request (a lookup under 2 % loss used to
    drop the one holder it lost a datagram to): it is sent again after the adaptive timeout."""
    from overlay.dht import DHTNode
    from tests.helpers.netutil import loopback_ips, network_config, node_identity

    config = network_config()
    ip_a, ip_b, ip_f = loopback_ips(3)
    a, b = DHTNode(node_identity(config), config), DHTNode(node_identity(config), config)
    await a.start(ip_a, 0)
    await b.start(ip_b, 0)
    loop = asyncio.get_running_loop()
    transport, wire = await loop.create_datagram_endpoint(
        lambda: DropFirstForwarder(b.address), local_addr=(ip_f, 0))
    try:
        via = transport.get_extra_info("sockname")[:2]
        await a.call(via, "ping")
        assert wire.dropped == 1
        assert a.stats.retransmits == 1
        assert a.stats.timeouts == 0
    finally:
        transport.close()
        a.stop()
        b.stop()


async def test_records_published_before_joining_reach_the_network_on_joining():
    """A supernode whose bootstrap node is not up yet publishes its record to nobody; once it
    joins, the record is on the other node at once, not at the next republish (5 min)."""
    from overlay.dht import DHTNode
    from tests.helpers.netutil import loopback_ips, network_config, node_identity

    config = network_config()
    ip_a, ip_b = loopback_ips(2)
    a, b = DHTNode(node_identity(config), config), DHTNode(node_identity(config), config)
    await a.start(ip_a, 0)
    try:
        assert await a.bootstrap([(ip_b, 9)]) == 0  # nobody there yet
        alice = Identity.generate()
        signed = records.presence(alice, "alice", "phone", seq=1,
                                  supernode_key=SUPERNODE.public_key,
                                  supernode_host="198.18.0.10", supernode_port=4000)
        result = await a.put(signed)
        assert (result.stored, result.remote) == (1, 0)
        await b.start(ip_b, 0)
        assert await a.bootstrap([b.address]) == 1
        assert [s.wire for s in b.storage.values(records.user_key("alice"))] == [signed.wire]
    finally:
        a.stop()
        b.stop()


#: how late the slow holders handle a store
SLOW_STORE_S = 5.0


async def test_a_put_returns_once_a_majority_of_k_stored_it_not_after_its_slowest_holder():
    """Five of a record's k closest nodes handle stores only after 5 s (far, or busy): the
    put returns as soon as 11 holders stored it -- before any of the slow five holds it -- and
    the slow five still end up holding it."""
    # requests are not given up on before the slow stores are handled: only the quorum ends
    # the put early
    patient = network_config(rpc_timeout_s=6 * SLOW_STORE_S, min_rpc_timeout_s=6 * SLOW_STORE_S)
    net = await Network(24, patient).start()
    try:
        alice = Identity.generate()
        signed = records.presence(alice, "alice", "phone", seq=1, online=False)
        publisher = net.nodes[0]
        closest = await publisher.closest(signed.dht_key)
        assert len(closest) == 20
        slow_ids = {c.node_id for c in closest[-5:]}
        slow = [n for n in [net.bootstrap, *net.nodes] if n.node_id in slow_ids]
        assert len(slow) == 5
        loop = asyncio.get_running_loop()
        for node in slow:
            proto = node._proto
            handle = proto._handle_request

            def late(env, addr, size, handle=handle):  # type: ignore[no-untyped-def]
                if isinstance(env.payload, list) and env.payload[:1] == ["store"]:
                    loop.call_later(SLOW_STORE_S, handle, env, addr, size)
                else:
                    handle(env, addr, size)

            proto._handle_request = late
        result = await publisher.put(signed)
        assert result.remote >= 11
        assert not any(n.storage.values(signed.dht_key) for n in slow), \
            "the put waited for its slowest holders"
        await wait_for(lambda: all(n.storage.values(signed.dht_key) for n in slow),
                       3 * SLOW_STORE_S)
    finally:
        net.stop()

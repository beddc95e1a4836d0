"""The unmodified PyPI ``kademlia.network.Server`` cannot join the overlay or store anything."""

from __future__ import annotations

import asyncio

from kademlia.network import Server
from kademlia.utils import digest

from overlay.core import records
from overlay.core.identity import Identity
from tests.helpers.netutil import Network, loopback_ips, wait_for


async def test_stock_kademlia_node_cannot_join_or_store():
    net = await Network(8).start()
    stock = Server()
    try:
        alice = Identity.generate()
        good = records.presence(alice, "alice", "phone", seq=1, online=False)
        await net.nodes[0].put(good)
        everyone = [net.bootstrap, *net.nodes]
        before = {n.address: sorted(n.storage.keys()) for n in everyone}
        dropped_before = sum(n.stats.dropped["foreign"] for n in everyone)

        await stock.listen(0, interface=loopback_ips(1)[0])
        joined = await stock.bootstrap([net.bootstrap.address, net.nodes[3].address])
        assert joined == []
        assert await stock.set("alice", "mallory was here") is False
        # talk to every node directly, bypassing the stock client's own routing table
        attempts = []
        for node in everyone:
            attempts += [
                stock.protocol.store(node.address, stock.node.id, digest("alice"), b"junk"),
                stock.protocol.store(node.address, stock.node.id, records.user_key("alice"),
                                     b"junk"),
                stock.protocol.ping(node.address, stock.node.id),
            ]
        answers = await asyncio.gather(*attempts)
        assert all(ok is False for ok, _ in answers)  # nobody answered the stock node

        await wait_for(lambda: sum(n.stats.dropped["foreign"] for n in everyone)
                       >= dropped_before + 3 * len(everyone) + 2)
        assert {n.address: sorted(n.storage.keys()) for n in everyone} == before
        stock_addr = stock.transport.get_extra_info("sockname")[:2]
        for node in everyone:
            assert all((c.host, c.port) != tuple(stock_addr) for c in node.contacts())
            assert not node.knows(stock.node.id)
        found = await net.nodes[5].get(records.user_key("alice"))
        assert [s.wire for s in found] == [good.wire]
    finally:
        stock.stop()
        net.stop()
        await asyncio.sleep(0)

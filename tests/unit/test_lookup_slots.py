"""A value lookup asks only as many holders as it still needs, without waiting on the dead.

Once a name lookup has answers, it keeps no more requests in flight than answers that could
still end it (``OverlayValueCrawl._slots``); a request unanswered past the network's expected
round trip stops holding such a slot, so a dead holder met near the end costs a round trip,
not the short timeout (``min_rpc_timeout_s``) it took before. The test sets that timeout to
30 s: a lookup that waits on a dead holder cannot end within the 10 s it is given."""

from __future__ import annotations

import asyncio

from kademlia.node import Node

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht.names import lookup_name
from tests.helpers.netutil import Network, network_config

#: long enough that waiting for it is unmistakable, not a measure of speed
DEAD_HOLDER_TIMEOUT_S = 30.0


async def test_a_name_lookup_does_not_wait_a_timeout_on_dead_holders():
    net = await Network(40, network_config(min_rpc_timeout_s=DEAD_HOLDER_TIMEOUT_S,
                                          rpc_timeout_s=DEAD_HOLDER_TIMEOUT_S)).start()
    try:
        alice = Identity.generate()
        claim = records.name_claim(alice, "alice", seq=1)
        await net.nodes[0].put(claim)
        key = claim.dht_key
        readers = net.nodes[-12:]
        reader_ids = {r.node_id for r in readers}
        holders = sorted((n for n in [net.bootstrap, *net.nodes]
                          if n.storage.values(key) and n.node_id not in reader_ids),
                         key=lambda n: Node(key).distance_to(Node(n.node_id)))
        # the closest holders die without a goodbye: every reader still lists them
        for dead in holders[:8]:
            dead.stop()
        for reader in readers:
            try:
                found = await asyncio.wait_for(lookup_name(reader, "alice"),
                                               DEAD_HOLDER_TIMEOUT_S / 3)
            except TimeoutError:
                raise AssertionError(
                    f"reader {reader.node_id.hex()[:8]} waited for a dead holder") from None
            assert found.owner.key == alice.public_key
    finally:
        net.stop()

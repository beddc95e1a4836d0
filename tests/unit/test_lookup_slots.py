"""A value lookup asks only as many holders as it still needs, without waiting on the dead.

Once a name lookup has answers, it keeps no more requests in flight than answers that could
still end it (``OverlayValueCrawl._slots``); a request unanswered past the network's expected
round trip stops holding such a slot, so a dead holder met near the end costs a round trip,
not the short timeout (``min_rpc_timeout_s``, 0.25 s) it took before."""

from __future__ import annotations

import statistics
import time

from kademlia.node import Node

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht.names import lookup_name
from tests.helpers.netutil import Network


async def test_a_name_lookup_does_not_wait_a_timeout_on_dead_holders():
    net = await Network(40).start()
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
        took = []
        for reader in readers:
            started = time.monotonic()
            found = await lookup_name(reader, "alice")
            took.append(time.monotonic() - started)
            assert found.owner.key == alice.public_key
        assert statistics.median(took) < net.config.min_rpc_timeout_s, (
            f"lookups took {[round(t, 3) for t in took]} s with dead holders")
    finally:
        net.stop()

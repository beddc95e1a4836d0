"""A contested name read through the uncontested fast path, attacked (issue 12).

A name lookup may stop early when a few holders from distinct networks agree and nobody named
another key (docs/ARCHITECTURE.md, DHT threat model). The attacker here has only what an
attacker has: 20 DHT nodes of her own on addresses of ONE /24, ids she ground next to alice's
name key (puzzle-valid), records for "alice" she signed herself, and sessions with the reader
she set up by answering its pings, so the reader asks her nodes before the honest holders.
Her nodes list only each other as contacts. What a user notices: which key the name resolves
to. Every reader still gets alice's key: her answers either come first and contest the name
(then all k closest are asked and the majority decides), or come too late to matter.
"""

from __future__ import annotations

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht.names import lookup_name
from tests.adversary.test_sybil import (
    K,
    answer_with,
    attacker_subnet,
    mallory_claim,
    puzzle_bits,
    stop_all,
    sybil_nodes,
    valid_id_near,
)
from tests.helpers.netutil import Network, wait_for


async def test_a_name_contested_from_one_subnet_resolves_to_its_owner():
    net = await Network(30).start()
    bits = puzzle_bits(net.bootstrap)
    alice, mallory = Identity.generate(), Identity.generate()
    key = records.user_key("alice")
    await net.nodes[0].put(records.name_claim(alice, "alice", seq=1))
    forged = mallory_claim(mallory)
    sybils = await sybil_nodes([valid_id_near(key, bits) for _ in range(K)], attacker_subnet(),
                               net.config, forged)
    honest = [net.bootstrap, *net.nodes]
    readers = net.nodes[-5:]
    try:
        for sybil in sybils:
            answer_with(sybil, sybils)
        for i, sybil in enumerate(sybils):
            await sybil.bootstrap([honest[i % len(honest)].address])
        await wait_for(lambda: all(s.stats.requests_in["ping"] >= 1 for s in sybils))
        # the readers already share session keys with her nodes: a value lookup asks those
        # first, so her answers are the first ones every reader sees
        for reader in readers:
            for sybil in sybils:
                await reader.call(sybil.address, "ping")
        for reader in readers:
            for _ in range(3):
                found = await lookup_name(reader, "alice")
                assert found.owner.key == alice.public_key, (
                    f"the lookup answered {found.owner.key.hex() if found.owner.key else None} "
                    f"(mallory {mallory.public_key.hex()[:16]}, "
                    f"conflict={found.owner.conflict})")
                assert found.records and all(
                    s.record.signer == alice.public_key for s in found.records)
        # her nodes were asked (the attack reached the lookups), and answered with her key
        asked = sum(s.stats.requests_in["find_value"] for s in sybils)
        assert asked >= len(readers), f"her nodes answered {asked} find_value requests"
    finally:
        stop_all(sybils)
        net.stop()

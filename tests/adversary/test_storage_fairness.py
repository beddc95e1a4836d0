"""Storage fairness, attacked (issue 12, flaw 3).

The victim is a real DHT node (this library, in process) listening on UDP on 127.x. The
attacker ("mallory") has only her own keys and her own DHT nodes, all on addresses of one
/24, and speaks the documented ``store`` / ``find_value`` methods to the victim over UDP.
Alice is an honest user whose DHT node sits on another /24.

* (a) one key tries to store 2,000 records: refused past its quota (``quota``), and alice's
  record is still accepted afterwards;
* (b) many throwaway keys from one /24 fill a node: alice's record stored before the filler
  started is still served, and alice can still store a new record and refresh her old one;
* (c) a store for a key the victim is far from, once its table knows plenty of closer nodes,
  is refused ``not_close`` (a key it is close to is still accepted).
"""

from __future__ import annotations

import asyncio
from typing import Any

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht import DHTNode
from overlay.dht.storage import StorageLimits
from tests.helpers.netutil import loopback_ips, network_config, node_identity, wait_for

CONFIG = network_config()


def three_subnets() -> tuple[str, str, list[str]]:
    """The victim's IP, alice's IP (another /24) and 12 of mallory's IPs (a third /24)."""
    base = loopback_ips(1)[0].rsplit(".", 2)[0]  # "127.a"
    return f"{base}.1.1", f"{base}.2.1", [f"{base}.66.{i}" for i in range(1, 13)]


async def started(ip: str, identity: Identity | None = None,
                  limits: StorageLimits | None = None) -> DHTNode:
    node = DHTNode(identity or node_identity(CONFIG), CONFIG, limits)
    await node.start(ip, 0)
    return node


async def store(sender: DHTNode, victim: DHTNode, signed: records.SignedRecord) -> Any:
    return await sender.call(victim.address, "store", signed.dht_key, signed.wire,
                             node_id=victim.node_id)


async def served(asker: DHTNode, victim: DHTNode, signed: records.SignedRecord) -> bool:
    answer = await asker.call(victim.address, "find_value", signed.dht_key,
                              node_id=victim.node_id)
    return signed.wire in answer.get("values", [])


async def test_one_key_cannot_fill_a_node():
    victim_ip, alice_ip, mallory_ips = three_subnets()
    victim = await started(victim_ip)
    alice_node = await started(alice_ip)
    mallory_node = await started(mallory_ips[0])
    try:
        mallory = Identity.generate()
        junk = [records.presence(mallory, f"junk{i}", "d", seq=1, online=False)
                for i in range(2000)]
        answers = []
        for start in range(0, len(junk), 100):
            answers += await asyncio.gather(
                *(store(mallory_node, victim, s) for s in junk[start:start + 100]))
        accepted = sum(1 for a in answers if a.get("ok") is True)
        reasons = {a.get("reason") for a in answers if a.get("ok") is not True}
        assert accepted < 200, f"one key stored {accepted} of 2000 records"
        assert reasons == {"quota"}

        alice = Identity.generate()
        mine = records.presence(alice, "alice", "laptop", seq=1, online=False)
        assert await store(alice_node, victim, mine) == {"ok": True}
        assert await served(alice_node, victim, mine)
    finally:
        for node in (victim, alice_node, mallory_node):
            node.stop()


async def test_throwaway_keys_from_one_subnet_cannot_push_alice_out():
    victim_ip, alice_ip, mallory_ips = three_subnets()
    # a small node, so the filler fills it in a second (same fields as before the fix)
    victim = await started(victim_ip, limits=StorageLimits(max_entries=300))
    alice_node = await started(alice_ip)
    mallory_nodes = [await started(ip) for ip in mallory_ips[:3]]
    try:
        alice = Identity.generate()
        mine = records.presence(alice, "alice", "laptop", seq=1, online=False)
        assert await store(alice_node, victim, mine) == {"ok": True}

        filler = [records.presence(Identity.generate(), f"filler{i}", "d", seq=1, online=False)
                  for i in range(900)]
        answers = []
        for start in range(0, len(filler), 90):
            answers += await asyncio.gather(*(
                store(mallory_nodes[i % 3], victim, s)
                for i, s in enumerate(filler[start:start + 90], start)))
        assert any(a.get("ok") is True for a in answers)  # the filler did get in

        assert await served(alice_node, victim, mine), "alice's earlier record was pushed out"
        claim = records.name_claim(alice, "alice", seq=1)
        answer = await store(alice_node, victim, claim)
        assert answer == {"ok": True}, f"alice cannot store a new record: {answer}"
        refreshed = records.presence(alice, "alice", "laptop", seq=2, online=False)
        answer = await store(alice_node, victim, refreshed)
        assert answer == {"ok": True}, f"alice cannot refresh her record: {answer}"
        assert await served(alice_node, victim, refreshed)
        assert await served(alice_node, victim, claim)
    finally:
        for node in (victim, alice_node, *mallory_nodes):
            node.stop()


def top_bit(b: bytes) -> int:
    return b[0] >> 7


def name_on_side(bit: int, prefix: str) -> str:
    i = 0
    while top_bit(records.user_key(f"{prefix}{i}")) != bit:
        i += 1
    return f"{prefix}{i}"


async def test_a_node_refuses_keys_it_is_far_from():
    victim_ip, _, _ = three_subnets()
    victim = await started(victim_ip)
    far_side = 1 - top_bit(victim.node_id)
    # 48 nodes whose ids lie on the other half of the id space, each on its own /24 (a table
    # takes at most 2 per /24 in one bucket)
    helper_ips = loopback_ips(48)
    helpers = []
    while len(helpers) < 48:
        identity = node_identity(CONFIG)
        if top_bit(identity.node_id) == far_side:
            helpers.append(await started(helper_ips[len(helpers)], identity))
    try:
        async def victim_knows_the_far_side() -> bool:
            # the victim verifies a newcomer by pinging it back, at most 10/s per /24 (the
            # anti-amplification budget), so helpers it has not added yet ping it again
            known = {c.node_id for c in victim.contacts()}
            await asyncio.gather(*(h.call(victim.address, "ping", node_id=victim.node_id)
                                   for h in helpers if h.node_id not in known))
            return sum(1 for c in victim.contacts()
                       if top_bit(c.node_id) == far_side) >= 2 * CONFIG.ksize

        await wait_for(victim_knows_the_far_side, timeout=30, interval=0.5)

        mallory = Identity.generate()
        far = records.presence(mallory, name_on_side(far_side, "far"), "d", seq=1,
                               online=False)
        answer = await store(helpers[0], victim, far)
        assert answer == {"ok": False, "reason": "not_close"}, answer
        assert not await served(helpers[0], victim, far)

        near = records.presence(mallory, name_on_side(1 - far_side, "near"), "d", seq=1,
                                online=False)
        assert await store(helpers[0], victim, near) == {"ok": True}
    finally:
        for node in (victim, *helpers):
            node.stop()

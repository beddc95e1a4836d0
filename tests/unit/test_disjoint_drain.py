"""A name lookup over disjoint paths (:class:`overlay.dht.disjoint.DisjointValueLookup`) counts
the answers a finished path already asked for while another path still asks: they may be the
honest votes that decide a contested name. Here the paths run over a scripted network (the
network's answers are released by the test, one by one, in the order that broke it: the
eclipse lab test failed so about one run in five before the fix)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from kademlia.node import Node

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht.disjoint import DisjointValueLookup


class ScriptedNetwork:
    """Stands in for the DHT protocol of the asking node: every ``find_value`` waits until
    the test releases that peer's answer."""

    def __init__(self, own_id: bytes) -> None:
        self.config = SimpleNamespace(id_puzzle_bits=0, max_lookup_contacts_per_subnet=64,
                                      name_uncontested_networks=4)
        self.stats = SimpleNamespace(lookup_contacts_refused=Counter())
        self.rtt = SimpleNamespace(expected=lambda: 60.0)  # nothing goes overdue here
        self.sessions = SimpleNamespace(holds_ours=lambda _id: False)
        self.source_node = Node(own_id)
        self.asked: list[bytes] = []
        self._answers: dict[bytes, asyncio.Future[list[bytes]]] = {}

    def _answer(self, peer_id: bytes) -> asyncio.Future[list[bytes]]:
        if peer_id not in self._answers:
            self._answers[peer_id] = asyncio.get_running_loop().create_future()
        return self._answers[peer_id]

    async def call_find_value(self, peer: Node, target: Node,
                              on_retransmit: Callable[[], None] | None = None
                              ) -> tuple[bool, Any]:
        self.asked.append(peer.id)
        values = await self._answer(peer.id)
        return True, SimpleNamespace(payload={"values": values, "nodes": []})

    def release(self, peer: Node, *signed: records.SignedRecord) -> None:
        self._answer(peer.id).set_result([s.wire for s in signed])


async def until(condition: Callable[[], bool]) -> None:
    """Let the paths run until ``condition`` holds (every step is a loop turn, no clock)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the lookup never got there")


def peer_at(key: bytes, distance: int, subnet: int) -> Node:
    node_id = (int.from_bytes(key, "big") ^ distance).to_bytes(len(key), "big")
    return Node(node_id, f"198.18.{subnet}.1", 4000)


async def test_a_finished_path_still_counts_the_answers_it_asked_for() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    key = records.user_key("alice")
    honest = records.presence(alice, "alice", "phone", seq=1, online=False)
    forged = records.presence(mallory, "alice", "phone", seq=9, online=False)
    h1, h2, h3, h4 = (peer_at(key, d, s) for d, s in ((1, 1), (2, 2), (3, 3), (10, 4)))
    m1, m2, m3 = (peer_at(key, d, s) for d, s in ((4, 5), (5, 6), (6, 7)))
    x1 = peer_at(key, 20, 8)
    net = ScriptedNetwork(peer_at(key, 1 << 150, 9).id)
    # dealt round-robin: path A gets h1..h4 (its whole list), path B m1..m3 and x1
    lookup = DisjointValueLookup(net, Node(key), [h1, m1, h2, m2, h3, m3, h4, x1], ksize=20,
                                 alpha=3, quorum=2, verify=records.verify, paths=2)
    finding = asyncio.ensure_future(lookup.find())
    await until(lambda: set(net.asked) == {h1.id, h2.id, h3.id, m1.id, m2.id, m3.id})
    net.release(h1, honest)
    await until(lambda: h4.id in net.asked)  # A has asked everyone on its list
    net.release(h2, honest)
    # two agreeing holders and nobody left to ask: A is done, with h3 and h4 in flight;
    # B is not (two networks, x1 still to ask)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not finding.done()
    for m in (m1, m2, m3):  # mallory's three: the name is contested now
        net.release(m, forged)
    for _ in range(20):
        await asyncio.sleep(0)
    net.release(h3, honest)
    net.release(h4, honest)
    await until(lambda: x1.id in net.asked)
    net.release(x1)
    await asyncio.wait_for(finding, 5.0)
    votes = Counter(held[0].record.signer for held in lookup.by_holder.values() if held)
    # the honest holders A asked all count: 4 against mallory's 3 (A dropped h3 and h4
    # before the fix: 2 against 3)
    assert votes == {alice.public_key: 4, mallory.public_key: 3}


async def test_an_answer_read_after_the_lookup_was_decided_is_not_counted() -> None:
    """The tally reads four agreeing networks (the uncontested fast path: the lookup is
    decided) just as mallory's first answer has arrived at the other path, unread. Read next,
    it used to turn the tally contested after the first path had stopped asking: mallory's
    five then met only the honest holders asked so far (5 against 5, a conflict; with one more
    sybil, a hijack). The lookup ends for every path at once instead."""
    alice, mallory = Identity.generate(), Identity.generate()
    key = records.user_key("alice")
    honest = records.presence(alice, "alice", "phone", seq=1, online=False)
    forged = records.presence(mallory, "alice", "phone", seq=9, online=False)
    h = [peer_at(key, d, s) for d, s in ((1, 1), (2, 2), (3, 3), (16, 4), (17, 5), (18, 6))]
    hb = peer_at(key, 4, 7)
    m = [peer_at(key, d, s) for d, s in ((5, 8), (6, 9), (7, 10), (8, 11), (9, 12))]
    net = ScriptedNetwork(peer_at(key, 1 << 150, 13).id)
    # path A: h[0..5]; path B: hb, then mallory's five
    dealt = [h[0], hb, h[1], m[0], h[2], m[1], h[3], m[2], h[4], m[3], h[5], m[4]]
    lookup = DisjointValueLookup(net, Node(key), dealt, ksize=20, alpha=3, quorum=2,
                                 verify=records.verify, paths=2)
    finding = asyncio.ensure_future(lookup.find())
    await until(lambda: set(net.asked) == {h[0].id, h[1].id, h[2].id, hb.id, m[0].id,
                                           m[1].id})
    net.release(h[0], honest)
    await until(lambda: h[3].id in net.asked)  # A: h[1], h[2], h[3] in flight
    net.release(hb, honest)
    net.release(h[1], honest)
    for _ in range(20):
        await asyncio.sleep(0)
    # three agreeing networks; A's fourth and mallory's first arrive together
    net.release(h[2], honest)
    net.release(m[0], forged)
    released = {h[0].id, hb.id, h[1].id, h[2].id, m[0].id}
    for _ in range(200):  # then every answer asked for, each as its holder would
        if finding.done():
            break
        await asyncio.sleep(0)
        for peer in [*h, *m]:
            if peer.id in net.asked and peer.id not in released:
                released.add(peer.id)
                net.release(peer, honest if peer in h else forged)
    await asyncio.wait_for(finding, 5.0)
    votes = Counter(held[0].record.signer for held in lookup.by_holder.values() if held)
    assert votes[alice.public_key] >= 4 and votes[mallory.public_key] == 0, votes

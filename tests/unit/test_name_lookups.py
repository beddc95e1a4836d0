"""A supernode's shared name lookups (:mod:`overlay.node.name_lookups`) on an in-process DHT:
askers of one name at once share one lookup, an answer naming an online device is used again
for a few seconds, and an answer without one never is."""

from __future__ import annotations

import asyncio
import time

from overlay.core import records
from overlay.core.identity import Identity
from overlay.node.name_lookups import NameLookups, online_presence
from tests.helpers.netutil import Network

SUPERNODE = Identity.generate()


def presence(who: Identity, seq: int, online: bool = True) -> records.SignedRecord:
    if not online:
        return records.presence(who, "alice", "phone", seq=seq, online=False)
    return records.presence(who, "alice", "phone", seq=seq, supernode_key=SUPERNODE.public_key,
                            supernode_host="198.18.0.10", supernode_port=4000)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_askers_share_one_lookup_and_its_answer_is_used_for_a_few_seconds() -> None:
    net = await Network(8).start()
    try:
        alice = Identity.generate()
        await net.nodes[0].put(presence(alice, 1))
        clock = Clock()
        names = NameLookups(net.nodes[5], ttl_s=5.0, clock=clock)
        answers = await asyncio.gather(*(names.lookup("alice") for _ in range(4)))
        assert (names.runs, names.joined) == (1, 3)
        assert all(a is answers[0] for a in answers)
        assert answers[0].owner.key == alice.public_key
        assert [r.device for r in online_presence(answers[0], time.time())] == ["phone"]
        clock.now += 4.9
        assert await names.lookup("alice") is answers[0]
        assert (names.runs, names.hits) == (1, 1)
        clock.now += 0.2  # past the 5 s: asked again
        await names.lookup("alice")
        assert names.runs == 2
        # fresh() never answers from memory
        await names.fresh("alice")
        assert names.runs == 3
    finally:
        net.stop()


async def test_an_answer_without_an_online_device_is_not_kept() -> None:
    net = await Network(8).start()
    try:
        alice = Identity.generate()
        await net.nodes[0].put(presence(alice, 1, online=False))
        names = NameLookups(net.nodes[4], clock=Clock())
        first = await names.lookup("alice")
        assert first.owner.key == alice.public_key and not online_presence(first,
                                                                           time.time())
        assert names.cached("alice") is None
        # alice comes online: the next lookup sees it (no "offline" from memory)
        await net.nodes[1].put(presence(alice, 2))
        second = await names.lookup("alice")
        assert [s.seq for s in second.records
                if isinstance(s.record, records.PresenceRecord)] == [2]
        assert [r.device for r in online_presence(second, time.time())] == ["phone"]
        assert names.runs == 2
        nobody = await names.lookup("nobody")
        assert nobody.owner.key is None and names.cached("nobody") is None
    finally:
        net.stop()

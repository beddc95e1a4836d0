"""Replay of captured DHT requests, attacked (issue 12, flaw 8).

The attacker ("mallory") sits on the path: an honest node sends its requests to a UDP socket
mallory owns on loopback (as any router on the way would see them), and mallory re-sends the
captured datagrams, byte for byte, from that socket to the node under attack. Everything runs
on 127.x; mallory never builds a datagram herself, she only replays what she captured.

* a request addressed to another node (here: to mallory's own key) is refused by the victim:
  a ``store`` captured that way stores nothing and draws no answer;
* the same request sent twice (same msg_id) is answered once;
* a request replayed after the clock-skew window (the nodes' clocks moved on 61 s: the
  protocol's ``clock`` attribute) is refused.

"Refused" is observed as silence: after the replay mallory passes one fresh honest request
through, and the victim answers datagrams in order, so an answer to the replay would have
arrived before the answer to that one.
"""

from __future__ import annotations

import time

from overlay.core import records
from overlay.core.identity import Identity, node_id_for
from overlay.dht import DHTNode
from tests.helpers.dht_tap import Tap
from tests.helpers.netutil import loopback_ips, network_config, node_identity


async def start() -> tuple[DHTNode, DHTNode, Tap]:
    ips = loopback_ips(3)
    config = network_config()
    victim, honest = DHTNode(node_identity(config), config), DHTNode(node_identity(config), config)
    await victim.start(ips[0], 0)
    await honest.start(ips[1], 0)
    return victim, honest, Tap(ips[2])


async def test_a_request_for_another_node_is_refused() -> None:
    victim, honest, tap = await start()
    mallory = Identity.generate()
    try:
        alice = Identity.generate()
        signed = records.presence(alice, "alice", "phone", seq=1, online=False)
        # alice's node stores her record at mallory's node; mallory hands it to the victim
        captured = await tap.capture(honest, "store", signed.dht_key, signed.wire,
                                     to=node_id_for(mallory.public_key))
        sentinel = await tap.capture(honest, "ping", to=victim.node_id)
        answers = await tap.replay(captured, victim, sentinel)
        assert answers == [], "the victim served a store addressed to another node"
        assert victim.storage.values(signed.dht_key) == []
        assert victim.stats.dropped["wrong_recipient"] == 1
    finally:
        tap.close()
        victim.stop()
        honest.stop()


async def test_the_same_request_is_served_once() -> None:
    victim, honest, tap = await start()
    try:
        key = records.user_key("alice")
        captured = await tap.capture(honest, "find_value", key, to=victim.node_id)
        first = await tap.capture(honest, "ping", to=victim.node_id)
        assert len(await tap.replay(captured, victim, first)) == 1  # the genuine delivery
        again = await tap.capture(honest, "ping", to=victim.node_id)
        answers = await tap.replay(captured, victim, again)
        assert answers == [], "the victim answered the same request (same msg_id) twice"
        assert victim.stats.dropped["replayed"] == 1
    finally:
        tap.close()
        victim.stop()
        honest.stop()


async def test_a_request_replayed_after_the_window_is_refused() -> None:
    victim, honest, tap = await start()
    try:
        captured = await tap.capture(honest, "find_node", victim.node_id, to=victim.node_id)
        # 61 s later (both clocks move on; the window is 60 s): a fresh request passes
        later = lambda: time.time() + 61  # noqa: E731
        victim._proto.clock = honest._proto.clock = later
        honest_later = await tap.capture(honest, "ping", to=victim.node_id)
        answers = await tap.replay(captured, victim, honest_later)
        assert answers == [], "the victim answered a request captured 61 s earlier"
        assert victim.stats.dropped["stale"] == 1
    finally:
        tap.close()
        victim.stop()
        honest.stop()

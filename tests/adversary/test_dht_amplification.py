"""UDP amplification through the DHT, attacked (issue 12, flaw 1).

The attacker has raw UDP sockets on loopback, its own key and the documented DHT datagram
format (it builds datagrams with :mod:`overlay.dht.envelope`). The node under attack is this
library's DHT node on its own 127.x address, holding 48 supernode records under the directory
key. Loopback cannot be spoofed, so the "victim" is simply the socket whose address the request
came from: what it receives before proving anything is what a spoofed victim would receive.

* (a) a small ``find_value`` for the 48-record key draws an answer of at most 3x the request
  datagram from an unproven source; the full 48 records need the cookie round trip.
* (a') a holder's answer with one record and 20 contacts, too large for 3x, loses contacts
  (farthest first) until it fits: the values come at once and still within 3x.
* (b) requests from an unknown sender (not a client) never make the node send the claimed
  address more bytes than the request had, and nothing at all beyond the per-/24 verification
  budget.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from kademlia.node import Node

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht import DHTNode
from overlay.dht.envelope import ANY_RECIPIENT, Flags, Kind, new_msg_id, open_datagram, seal
from tests.helpers.netutil import loopback_ips, network_config, node_identity, wait_for
from tests.helpers.shards import hosts_in_one_shard

RECORDS = 48


def directory_records() -> list[records.SignedRecord]:
    """48 honest-looking supernode records, each by its own key, hosts in distinct /24s of
    one directory shard (so all 48 are under one key)."""
    return [records.supernode(Identity.generate(), host, 4000, seq=1)
            for host in hosts_in_one_shard(RECORDS)]


class Udp:
    """A raw UDP socket of the attacker's (non-blocking, read through the event loop)."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)
        self.received: list[bytes] = []

    @property
    def address(self) -> tuple[str, int]:
        addr = self.sock.getsockname()
        return (addr[0], addr[1])

    def drain(self) -> None:
        while True:
            try:
                self.received.append(self.sock.recv(65536))
            except BlockingIOError:
                return

    async def ask(self, datagram: bytes, to: tuple[str, int], timeout: float = 3.0) -> bytes:
        """Send ``datagram``; the answer to it (anything else received is kept in
        ``received``)."""
        loop = asyncio.get_running_loop()
        msg_id = open_datagram(datagram).msg_id
        self.sock.sendto(datagram, to)
        while True:
            data: bytes = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
            env = open_datagram(data)
            if env.kind is Kind.RESPONSE and env.msg_id == msg_id:
                return data
            self.received.append(data)

    def close(self) -> None:
        self.sock.close()


def request(identity: Identity, method: str, args: list[Any], flags: Flags = Flags.NONE,
            cookie: bytes | None = None, to: bytes = ANY_RECIPIENT) -> bytes:
    """A request datagram in the documented format (``to``: the recipient's node id)."""
    payload: list[Any] = [method, args] if cookie is None else [method, args, cookie]
    return seal(identity, Kind.REQUEST, new_msg_id(), flags, payload, recipient=to)


async def start_target() -> tuple[DHTNode, bytes, list[str]]:
    ips = loopback_ips(3)
    node = DHTNode(node_identity(network_config()), network_config())
    await node.start(ips[0], 0)
    recs = directory_records()
    for signed in recs:
        node.storage.put(signed.dht_key, signed.wire)
    assert len(node.storage.values(recs[0].dht_key)) == RECORDS
    return node, recs[0].dht_key, ips


async def test_find_value_answer_to_an_unproven_source_is_at_most_3x_the_request() -> None:
    node, key, ips = await start_target()
    mallory = Identity.generate()
    victim = Udp(ips[1])
    try:
        datagram = request(mallory, "find_value", [key], to=node.node_id)
        first = await victim.ask(datagram, node.address)
        assert len(first) <= 3 * len(datagram), (
            f"{len(datagram)}-byte find_value drew a {len(first)}-byte answer "
            f"(x{len(first) / len(datagram):.0f}) to an unproven source")
        answer = open_datagram(first).payload
        assert answer.get("truncated") is True and "values" not in answer
        # the cookie round trip proves the address: then the whole answer comes
        retry = request(mallory, "find_value", [key], cookie=answer["cookie"], to=node.node_id)
        full = open_datagram(await victim.ask(retry, node.address)).payload
        assert len(full["values"]) == RECORDS
        # a cookie is bound to the address it was sent to: another socket cannot use it
        other = Udp(ips[2])
        try:
            stolen = await other.ask(
                request(mallory, "find_value", [key], cookie=answer["cookie"], to=node.node_id),
                node.address)
            assert len(stolen) <= 3 * len(datagram)
            assert "values" not in open_datagram(stolen).payload
        finally:
            other.close()
    finally:
        victim.close()
        node.stop()


async def test_a_holders_answer_cut_to_fit_is_still_at_most_3x_the_request() -> None:
    ips = loopback_ips(2)
    config = network_config()
    node = DHTNode(node_identity(config), config)
    await node.start(ips[0], 0)
    signed = records.presence(Identity.generate(), "alice", "phone", seq=1, online=False)
    node.store_local(signed.wire, signed.dht_key)
    for i in range(20):  # contacts at addresses nothing listens on: only listed, never asked
        assert node._proto.router.add_contact(
            Node(node_identity(config).node_id, f"198.18.{i}.1", 4000))
    mallory = Identity.generate()
    victim = Udp(ips[1])
    try:
        full = node._proto.rpc_find_value(victim.address, signed.dht_key)
        assert len(full["nodes"]) == 20
        datagram = request(mallory, "find_value", [signed.dht_key], to=node.node_id)
        assert len(seal(node.identity, Kind.RESPONSE, new_msg_id(), Flags.NONE, full,
                        recipient=ANY_RECIPIENT)) > 3 * len(datagram)
        first = await victim.ask(datagram, node.address)
        assert len(first) <= 3 * len(datagram), (
            f"{len(datagram)}-byte find_value drew a {len(first)}-byte answer")
        answer = open_datagram(first).payload
        assert answer["values"] == [signed.wire]
        assert 0 < len(answer["nodes"]) < 20
        closest = [list(contact) for contact in full["nodes"]]  # as the wire decodes them
        assert answer["nodes"] == closest[: len(answer["nodes"])]  # the closest kept
        assert node.stats.dropped["trimmed_unproven"] == 1
    finally:
        victim.close()
        node.stop()


async def test_unknown_senders_get_no_more_than_they_sent_to_the_claimed_address() -> None:
    node, key, ips = await start_target()
    victim = Udp(ips[1])
    sent = 0
    try:
        got = 0
        smallest = 65536
        started = time.monotonic()
        for _ in range(100):  # 100 throwaway "DHT nodes", each asking once from the victim
            for method, args in (("ping", []), ("find_node", [key]), ("find_value", [key])):
                datagram = request(Identity.generate(), method, args, to=node.node_id)
                sent += len(datagram)
                smallest = min(smallest, len(datagram))
                answer = await victim.ask(datagram, node.address)
                assert len(answer) <= 3 * len(datagram), f"{method}: {len(answer)} bytes"
                got += len(answer)
        # the node's verification pings go out right after its answers: wait until the node
        # has no verification in flight any more (each ends by answer or timeout)
        await wait_for(lambda: not node._proto._verifying, timeout=10)
        victim.drain()
        got += sum(len(d) for d in victim.received)
        assert got <= 2 * sent, f"the victim received {got} bytes for {sent} bytes of requests"
        pings = [d for d in victim.received if open_datagram(d).kind is Kind.REQUEST]
        assert all(len(p) <= smallest for p in pings), "a verification ping outgrew a request"
        # the documented budget: a burst of 20 per /24, then 10 per second
        budget = 20 + 10 * (time.monotonic() - started)
        assert len(pings) <= budget, f"{len(pings)} verification pings reflected at the victim"
    finally:
        victim.close()
        node.stop()

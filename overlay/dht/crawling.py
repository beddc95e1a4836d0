"""Iterative lookups: kademlia's spider crawls, rebuilt around requests in flight.

Fixes over ``kademlia.crawling``:

* a round no longer waits for all alpha answers: up to alpha requests stay in flight and each
  answer immediately launches the next closest uncontacted node, so a dead contact occupies one
  slot for one (adaptive, short) timeout instead of stalling the whole lookup; a request past
  that timeout is sent once more by the protocol and still waited for (its answer counts if
  it comes), but frees its slot, as libtorrent's DHT traversal treats a "short timeout";
* responses are parsed with a strict schema; a malformed answer (``{"value": [...]}``,
  ``{"x": 1}``, junk node tuples) counts as a failed contact instead of raising mid-crawl;
* a value lookup merges the answers of several close nodes and returns every valid record,
  newest per (owner, device), instead of the first value that arrived; it also keeps each
  holder's own answer. For a name (records that claim one) it stops early only once more than
  half of k holders agree on one signer key, else it asks all k closest nodes: a few Sybils
  placed next to the key and answering first cannot end the lookup (the majority decides:
  :mod:`overlay.dht.names`).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from kademlia.crawling import NodeSpiderCrawl, ValueSpiderCrawl
from kademlia.node import Node, NodeHeap

from overlay.core.records import RecordError, SignedRecord

MAX_NODES_PER_RESPONSE = 20
MAX_VALUES_PER_RESPONSE = 48

RpcMethod = Callable[[Node, Node, Callable[[], None]], Awaitable[tuple[bool, Any]]]


def _is_ip(text: str) -> bool:
    """A literal IPv4 or IPv6 address (inet_pton: ~20x cheaper than ipaddress)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
        except OSError:
            continue
        return True
    return False


class IdNodeHeap(NodeHeap):  # type: ignore[misc]
    """kademlia's NodeHeap with O(1) membership (the stock one scans the heap per push)."""

    heap: list[tuple[int, Node]]

    def __init__(self, node: Node, maxsize: int) -> None:
        super().__init__(node, maxsize)
        self.ids: set[bytes] = set()

    def push(self, nodes: Node | list[Node]) -> None:
        for n in nodes if isinstance(nodes, list) else [nodes]:
            if n.id not in self.ids:
                self.ids.add(n.id)
                heapq.heappush(self.heap, (self.node.distance_to(n), n))

    def remove(self, peers: list[bytes]) -> None:
        gone = set(peers) & self.ids
        if gone:
            self.ids -= gone
            self.heap = [entry for entry in self.heap if entry[1].id not in gone]
            heapq.heapify(self.heap)

    def __contains__(self, node: Node) -> bool:
        return node.id in self.ids


def parse_nodes(raw: object, own_id: bytes) -> list[Node] | None:
    """Contacts from a response's ``nodes`` field; None when the field is malformed."""
    if not isinstance(raw, list) or len(raw) > MAX_NODES_PER_RESPONSE:
        return None
    nodes = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or type(item[0]) is not bytes
            or len(item[0]) != 20
            or type(item[1]) is not str
            or type(item[2]) is not int
            or not 0 < item[2] < 65536
        ):
            return None
        if not _is_ip(item[1]):
            return None
        if item[0] != own_id:
            nodes.append(Node(item[0], item[1], item[2]))
    return nodes


class _InflightCrawl:
    """Shared loop: keep up to alpha requests in flight until the crawl says it is done."""

    protocol: Any
    nearest: Any
    alpha: int
    ksize: int
    node: Node
    answered: dict[bytes, Node]

    def _is_done(self) -> bool:
        return False

    def _accept(self, peer: Node, payload: object) -> bool:
        raise NotImplementedError

    async def _crawl(self, rpcmethod: RpcMethod) -> None:
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Future[tuple[bool, Any]], Node] = {}
        #: requests past their adaptive timeout: still awaited, no longer holding a slot
        slow: set[bytes] = set()
        wake: asyncio.Future[None] = loop.create_future()

        def went_slow(peer_id: bytes) -> None:
            slow.add(peer_id)
            if not wake.done():
                wake.set_result(None)

        while not self._is_done():
            for peer in self.nearest.get_uncontacted():
                if len(pending) - len(slow) >= self.alpha:
                    break
                self.nearest.mark_contacted(peer)
                request = rpcmethod(peer, self.node, functools.partial(went_slow, peer.id))
                pending[asyncio.ensure_future(request)] = peer
            if not pending:
                break
            waiting: list[asyncio.Future[Any]] = [*pending, wake]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if wake.done():
                wake = loop.create_future()
            for task in done:
                if task not in pending:
                    continue
                peer = pending.pop(task)
                slow.discard(peer.id)
                ok, reply = task.result()
                if ok and self._accept(peer, reply.payload):
                    self.answered[peer.id] = peer
                else:
                    self.nearest.remove([peer.id])
            if self._enough_answers():
                break
        # stragglers finish on their own and still update the routing table

    def _enough_answers(self) -> bool:
        """Once k nodes answered and nobody closer is left to ask, slow contacts are not
        waited for: they are not in the result either."""
        return len(self.answered) >= self.ksize and not self.nearest.get_uncontacted()


class OverlayNodeCrawl(_InflightCrawl, NodeSpiderCrawl):  # type: ignore[misc]
    """Find the k closest live nodes to a key."""

    def __init__(self, protocol: Any, node: Node, peers: list[Node], ksize: int, alpha: int):
        NodeSpiderCrawl.__init__(self, protocol, node, [], ksize, alpha)
        self.nearest = IdNodeHeap(node, ksize)
        self.nearest.push(list(peers))
        self.answered = {}

    async def find(self) -> list[Node]:
        """The k closest nodes that answered."""
        await self._crawl(self.protocol.call_find_node)
        live = sorted(self.answered.values(), key=self.node.distance_to)
        return live[: self.ksize]

    def _accept(self, peer: Node, payload: object) -> bool:
        if not isinstance(payload, dict) or set(payload) != {"nodes"}:
            return False
        nodes = parse_nodes(payload["nodes"], self.protocol.source_node.id)
        if nodes is None:
            return False
        self.nearest.push(nodes)
        return True


class OverlayValueCrawl(_InflightCrawl, ValueSpiderCrawl):  # type: ignore[misc]
    """Collect the records under a key from its closest nodes, newest per slot."""

    def __init__(
        self,
        protocol: Any,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        quorum: int,
        verify: Callable[[object], SignedRecord],
        name_quorum: int | None = None,
    ) -> None:
        ValueSpiderCrawl.__init__(self, protocol, node, [], ksize, alpha)
        self.nearest = IdNodeHeap(node, ksize)
        self.nearest.push(list(peers))
        self.answered = {}
        self.quorum = quorum
        #: holders that must agree before a name lookup stops early (default: a majority of k)
        self.name_quorum = max(quorum, ksize // 2 + 1) if name_quorum is None else name_quorum
        self.verify = verify
        self.found: dict[tuple[bytes, str], SignedRecord] = {}
        #: each holder's valid records, by node id: one answer per node, never merged
        self.by_holder: dict[bytes, tuple[SignedRecord, ...]] = {}
        #: the signer keys of the name records seen so far, per holder that sent any
        self._signers: set[frozenset[bytes]] = set()
        self.rejected = 0

    @property
    def holders(self) -> int:
        return len(self.by_holder)

    def seed(self, node_id: bytes, held: list[SignedRecord]) -> None:
        """Count this node's own records as one holder's answer."""
        if held:
            self._add_holder(node_id, held)

    async def find(self) -> list[SignedRecord]:
        await self._crawl(self.protocol.call_find_value)
        return list(self.found.values())

    def _is_done(self) -> bool:
        if not self._signers:  # no name records (e.g. the supernode directory)
            return self.holders >= self.quorum
        if not self.agreed() or self.holders < self.quorum:
            return False
        # unanimous: enough of k, or everyone left to ask is only a straggler (whose vote
        # could turn the answer into a conflict at most, never into another owner)
        return self.holders >= self.name_quorum or not self.nearest.get_uncontacted()

    def agreed(self) -> bool:
        """Every holder so far sent records of one and the same signer for a name (or none
        for a name at all, e.g. the supernode directory)."""
        return len(self._signers) <= 1 and all(len(keys) <= 1 for keys in self._signers)

    def _add_holder(self, node_id: bytes, held: list[SignedRecord]) -> None:
        self.by_holder[node_id] = tuple(held)
        signers = frozenset(s.record.signer for s in held if s.record.claimed_name is not None)
        if signers:
            self._signers.add(signers)
        for signed in held:
            current = self.found.get(signed.slot)
            if current is None or signed.seq > current.seq:
                self.found[signed.slot] = signed

    def _accept(self, peer: Node, payload: object) -> bool:
        if not isinstance(payload, dict) or set(payload) != {"values", "nodes"}:
            return False
        values = payload["values"]
        nodes = parse_nodes(payload["nodes"], self.protocol.source_node.id)
        if nodes is None or not isinstance(values, list) or len(values) > MAX_VALUES_PER_RESPONSE:
            return False
        self.nearest.push(nodes)
        held = []
        for wire in values:
            try:
                signed = self.verify(wire)
            except RecordError:
                self.rejected += 1
                continue
            if signed.dht_key != self.node.id:
                self.rejected += 1
                continue
            held.append(signed)
        if held and peer.id not in self.by_holder:
            self._add_holder(peer.id, held)
        return True

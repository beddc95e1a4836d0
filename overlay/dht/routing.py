"""Routing table: kademlia's, with its traversal fixed and Sybil limits added.

Fixes over ``kademlia.routing``:

* the stock ``find_neighbors`` walks buckets with ``TableTraverser``, which stops as soon as
  the left side is exhausted on a left turn (fewer than min(k, table size) contacts), and it
  stops at the first k contacts *visited*, which are not the k *closest*. Ours visits buckets
  by the smallest distance their range allows and stops only when no unvisited bucket can
  hold a closer contact: exactly the k closest.
* Sybil limits, checked before a contact enters (contacts only enter after they answered,
  enforced by the protocol, which is the only caller): its id solves the network's id puzzle
  (:func:`overlay.core.identity.id_puzzle_ok`); at most ``max_per_ip`` contacts per IP
  address and one per (IP, port); diversity as go-libp2p-kbucket's peerdiversity filter: at
  most ``max_per_subnet_per_bucket`` contacts of one IPv4 /24 (IPv6 /48) per bucket (the
  common-prefix length with our id, so the limit does not depend on how buckets were split)
  and ``max_per_subnet`` in the whole table. Ids ground next to a key share their prefix with
  the key, hence one bucket of everyone else's table: one network places at most two there.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kademlia.node import Node
from kademlia.routing import KBucket, RoutingTable

from overlay.core.addresses import network_key
from overlay.core.identity import id_puzzle_ok


@dataclass(frozen=True)
class TableLimits:
    """What may enter a routing table (from :class:`overlay.dht.protocol.DHTConfig`)."""

    id_puzzle_bits: int
    max_per_ip: int
    max_per_subnet_per_bucket: int
    max_per_subnet: int


def common_prefix_bits(a: int, b: int) -> int:
    return 160 - (a ^ b).bit_length()


class OverlayRoutingTable(RoutingTable):  # type: ignore[misc]
    def __init__(self, protocol: Any, ksize: int, node: Node, limits: TableLimits) -> None:
        self.limits = limits
        self.per_ip: Counter[str] = Counter()
        self.per_subnet: Counter[str] = Counter()
        self.per_subnet_bucket: Counter[tuple[str, int]] = Counter()
        #: contacts refused by a limit, by limit
        self.refused: Counter[str] = Counter()
        super().__init__(protocol, ksize, node)

    def flush(self) -> None:
        super().flush()
        self._recount()

    def refusal(self, node: Node) -> str | None:
        """Why ``node`` (not in the table yet) may not enter it, or None."""
        if not id_puzzle_ok(node.id, self.limits.id_puzzle_bits):
            return "bad_node_id"
        if self.per_ip[node.ip] >= self.limits.max_per_ip:
            return "per_ip"
        subnet = network_key(node.ip)
        if self.per_subnet[subnet] >= self.limits.max_per_subnet:
            return "per_subnet"
        bucket = common_prefix_bits(self.node.long_id, node.long_id)
        if self.per_subnet_bucket[(subnet, bucket)] >= self.limits.max_per_subnet_per_bucket:
            return "per_subnet_bucket"
        return None

    def contacts(self) -> list[Node]:
        return [n for bucket in self.buckets for n in bucket.get_nodes()]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    def find_contact(self, node_id: bytes) -> Node | None:
        bucket: KBucket = self.buckets[self.get_bucket_for(Node(node_id))]
        found: Node | None = bucket[node_id]
        return found

    def is_among_closest(self, own: Node, key: bytes, slack: int) -> bool:
        """Whether ``own`` is among the ksize * ``slack`` closest nodes this table knows to
        ``key``; a table of fewer than ksize contacts cannot tell and says yes."""
        if len(self) < self.ksize:
            return True
        want = self.ksize * slack
        target = Node(key)
        nearest = self.find_neighbors(target, k=want)
        ours: int = own.distance_to(target)
        farthest: int = nearest[-1].distance_to(target) if nearest else 0
        return len(nearest) < want or ours < farthest

    def _at_address(self, ip: str, port: int) -> Node | None:
        for n in self.contacts():
            if n.ip == ip and n.port == port:
                return n
        return None

    def add_contact(self, node: Node) -> bool:
        """Add an answered contact. Returns False when a limit refused it."""
        if node.id == self.node.id:
            return False
        if self.find_contact(node.id) is not None:
            super().add_contact(node)
            return True
        same_address = self._at_address(node.ip, node.port)
        if same_address is not None:
            # the socket now answers with another key: the old key is gone from there
            self.remove_contact(same_address)
        reason = self.refusal(node)
        if reason is not None:
            self.refused[reason] += 1
            return False
        before = len(self)
        super().add_contact(node)
        if len(self) > before:
            self._count(node)
        return True

    def remove_contact(self, node: Node) -> None:
        super().remove_contact(node)
        # a replacement node may have been promoted into the bucket
        self._recount()

    def _count(self, node: Node) -> None:
        subnet = network_key(node.ip)
        self.per_ip[node.ip] += 1
        self.per_subnet[subnet] += 1
        self.per_subnet_bucket[(subnet, common_prefix_bits(self.node.long_id,
                                                           node.long_id))] += 1

    def _recount(self) -> None:
        self.per_ip, self.per_subnet, self.per_subnet_bucket = Counter(), Counter(), Counter()
        for n in self.contacts():
            self._count(n)

    def split_bucket(self, index: int) -> None:
        super().split_bucket(index)
        self._recount()

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        """The k contacts closest to ``node`` (all of them when fewer than k).

        Buckets are visited in order of the smallest XOR distance any id in their range can
        have to the target, and the search stops once k contacts are known and no unvisited
        bucket can hold a closer one: the exact k closest, without ranking the whole table.
        """
        k = k or self.ksize
        target = node.long_id
        bounds = []
        for bucket in self.buckets:
            if not bucket.nodes:
                continue
            lo, hi = bucket.range
            m = (lo ^ hi).bit_length()
            bounds.append((((lo ^ target) >> m) << m, id(bucket), bucket))
        bounds.sort(key=lambda b: (b[0], b[1]))
        best: list[tuple[int, int, Node]] = []  # max-heap by distance, as negatives
        for bound, _, bucket in bounds:
            if len(best) >= k and bound > -best[0][0]:
                break
            for n in bucket.nodes.values():
                if n.id == node.id or (
                    exclude is not None and n.ip == exclude.ip and n.port == exclude.port
                ):
                    continue
                d = n.long_id ^ target
                if len(best) < k:
                    heapq.heappush(best, (-d, id(n), n))
                elif d < -best[0][0]:
                    heapq.heapreplace(best, (-d, id(n), n))
        return [n for _, _, n in sorted(best, key=lambda e: -e[0])]

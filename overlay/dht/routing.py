"""Routing table: kademlia's, with its traversal fixed and Sybil limits added.

Fixes over ``kademlia.routing``:

* the stock ``find_neighbors`` walks buckets with ``TableTraverser``, which stops as soon as
  the left side is exhausted on a left turn (fewer than min(k, table size) contacts), and it
  stops at the first k contacts *visited*, which are not the k *closest*. Ours visits buckets
  by the smallest distance their range allows and stops only when no unvisited bucket can
  hold a closer contact: exactly the k closest.
* At most ``max_per_ip`` contacts per IP address, one contact per (IP, port); contacts only
  enter after they answered (enforced by the protocol, which is the only caller).
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

from kademlia.node import Node
from kademlia.routing import KBucket, RoutingTable


class OverlayRoutingTable(RoutingTable):  # type: ignore[misc]
    def __init__(self, protocol: Any, ksize: int, node: Node, max_per_ip: int) -> None:
        self.max_per_ip = max_per_ip
        self.per_ip: Counter[str] = Counter()
        super().__init__(protocol, ksize, node)

    def flush(self) -> None:
        super().flush()
        self.per_ip = Counter()

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
        if self.per_ip[node.ip] >= self.max_per_ip:
            return False
        before = len(self)
        super().add_contact(node)
        if len(self) > before:
            self.per_ip[node.ip] += 1
        return True

    def remove_contact(self, node: Node) -> None:
        present = self.find_contact(node.id)
        before = len(self)
        super().remove_contact(node)
        if present is not None and len(self) < before:
            self.per_ip[present.ip] -= 1
            if self.per_ip[present.ip] <= 0:
                del self.per_ip[present.ip]
        # a replacement node may have been promoted into the bucket
        self._recount()

    def _recount(self) -> None:
        self.per_ip = Counter(n.ip for n in self.contacts())

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

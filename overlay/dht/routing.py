"""Routing table: kademlia's, with its traversal fixed and Sybil limits added.

Fixes over ``kademlia.routing``:

* ``TableTraverser`` stops as soon as the left side is exhausted on a left turn, so
  ``find_neighbors`` returns fewer than min(k, table size) contacts. ``FullTableTraverser``
  keeps going on whichever side still has buckets.
* ``find_neighbors`` stops at the first k contacts *visited*, which are not the k *closest*;
  ours ranks every contact.
* At most ``max_per_ip`` contacts per IP address, one contact per (IP, port); contacts only
  enter after they answered (enforced by the protocol, which is the only caller).
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

from kademlia.node import Node
from kademlia.routing import KBucket, RoutingTable, TableTraverser


class FullTableTraverser(TableTraverser):  # type: ignore[misc]
    """Visit every bucket: alternate sides while both have buckets, then drain the other."""

    current_nodes: list[Node]
    left_buckets: list[KBucket]
    right_buckets: list[KBucket]
    left: bool

    def __next__(self) -> Node:
        if self.current_nodes:
            return self.current_nodes.pop()
        if self.left_buckets and (self.left or not self.right_buckets):
            self.current_nodes = self.left_buckets.pop().get_nodes()
            self.left = False
            return next(self)
        if self.right_buckets:
            self.current_nodes = self.right_buckets.pop(0).get_nodes()
            self.left = True
            return next(self)
        raise StopIteration


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
        """The k contacts closest to ``node`` (all of them when fewer than k)."""
        k = k or self.ksize
        ranked = (
            (node.distance_to(n), n)
            for n in FullTableTraverser(self, node)
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        )
        return [n for _, n in heapq.nsmallest(k, ranked, key=lambda pair: pair[0])]

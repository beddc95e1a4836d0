"""A name lookup over disjoint paths (S/Kademlia): d value crawls that share their candidates'
limits and one tally of the holders' answers (:mod:`overlay.dht.crawling`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any

from kademlia.node import Node

from overlay.core.records import SignedRecord
from overlay.dht.crawling import LookupShare, OverlayValueCrawl, ValueTally


class DisjointValueLookup:
    """A value lookup over ``paths`` disjoint paths (S/Kademlia): the initial contacts are
    dealt round-robin into the paths (closest first), each path crawls with its own candidates
    and never asks a node another path asked, and every holder's answer goes into one
    :class:`ValueTally`. The lookup ends when every path has ended: all at once when the tally
    meets the early-stop rule (it closes: answers read later do not count), or each when its
    own k closest answered or only stragglers are left; such a path keeps counting the
    answers it asked for while another path still asks (the tally may still turn contested,
    and then they count)."""

    def __init__(
        self,
        protocol: Any,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        quorum: int,
        verify: Callable[[object], SignedRecord],
        paths: int,
    ) -> None:
        self.share = LookupShare.for_protocol(protocol)
        self.tally = ValueTally()
        count = max(1, min(paths, len(peers)))
        self.paths = [
            OverlayValueCrawl(protocol, node, peers[i::count], ksize, alpha, quorum, verify,
                              share=self.share, tally=self.tally)
            for i in range(count)
        ]

    def seed(self, node_id: bytes, held: list[SignedRecord]) -> None:
        if held:
            self.tally.add(node_id, held)

    async def find(self) -> list[SignedRecord]:
        """Every path's crawl; when one ends, the others look at the shared tally at once
        instead of at their next answer (which, from a dead node, is a timeout away)."""
        crawls = [asyncio.ensure_future(path.find()) for path in self.paths]
        running = list(zip(self.paths, crawls, strict=True))
        for i, (path, crawl) in enumerate(running):
            path.others_asking = functools.partial(_any_asking, running[:i] + running[i + 1:])
            crawl.add_done_callback(self._wake_paths)
        await asyncio.gather(*crawls)
        return list(self.tally.found.values())

    def _wake_paths(self, _: object) -> None:
        for path in self.paths:
            path.wake_up()

    @property
    def by_holder(self) -> dict[bytes, tuple[SignedRecord, ...]]:
        return self.tally.by_holder


def _any_asking(others: Sequence[tuple[OverlayValueCrawl, asyncio.Future[list[SignedRecord]]]]
                ) -> bool:
    """Whether another path still runs and is not done itself (only draining, like us)."""
    return any(not crawl.done() and path.still_asking() for path, crawl in others)

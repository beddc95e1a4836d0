"""The DHT server: kademlia's ``Server`` with its storage, crawls and protocol replaced.

Fixes over ``kademlia.network.Server``:

* ``set_digest`` counts the nodes that really stored the value (the stock one reports success
  when nothing was stored) and survives every contact being dead (stock: ``max([])``);
* a put returns once a majority of k holders (11 of 20) stored the record, not after the
  slowest of the k: the other stores carry on in the background (:meth:`store_quorum`);
* only the original publisher republishes, with the record's own expiry (stock: every holder
  republishes and refreshes the timestamp, so values never expire);
* a put that only this node stored while it knows other nodes is tried again with backoff
  (``replicate_retry_s``) until another node holds it, not left to the next republish;
* state is saved as JSON peers, never pickle, and loaded with the node's own key.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from overlay.core.identity import Identity, node_id_for
from overlay.core.logs import get_logger
from overlay.core.records import RecordError, SignedRecord, WrongKey
from overlay.core.tasks import TaskSet
from overlay.dht.config import DHTConfig, DHTStats
from overlay.dht.crawling import OverlayNodeCrawl, OverlayValueCrawl
from overlay.dht.disjoint import DisjointValueLookup
from overlay.dht.protocol import AppHandler, OverlayProtocol
from overlay.dht.requests import Reply
from overlay.dht.storage import RecordStorage

log = get_logger(__name__)


@dataclass(frozen=True)
class ValueAnswers:
    """A value lookup: the merged records (newest per slot) and, by node id, what each
    holder that sent valid records answered (this node's own storage included)."""

    records: list[SignedRecord]
    holders: dict[bytes, tuple[SignedRecord, ...]]


@dataclass
class PutResult:
    stored: int = 0
    #: how many of ``stored`` are other nodes
    remote: int = 0
    refused: Counter[str] = field(default_factory=Counter)


class OverlayServer(Server):  # type: ignore[misc]
    protocol_class = OverlayProtocol

    def __init__(
        self,
        identity: Identity,
        config: DHTConfig,
        storage: RecordStorage,
        stats: DHTStats,
        handlers: dict[str, AppHandler],
    ) -> None:
        super().__init__(
            ksize=config.ksize, alpha=config.alpha, node_id=identity.node_id, storage=storage
        )
        self.identity = identity
        self.config = config
        self.stats = stats
        self.handlers = handlers
        self.protocol: OverlayProtocol | None = None
        #: records this node published itself, by (key, slot): the only ones it republishes
        self.published: dict[tuple[bytes, tuple[bytes, str]], SignedRecord] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._retries = TaskSet()
        #: stores of puts in flight (those past a put's quorum end on their own)
        self._stores = TaskSet()

    def _create_protocol(self) -> OverlayProtocol:
        return OverlayProtocol(
            self.node,
            self.storage,
            self.ksize,
            self.identity,
            self.config,
            self.stats,
            self.handlers,
        )

    async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
        loop = asyncio.get_running_loop()
        self.transport, self.protocol = await loop.create_datagram_endpoint(
            self._create_protocol, local_addr=(interface, port)
        )
        self.node.ip, self.node.port = self.transport.get_extra_info("sockname")[:2]
        self._maintenance = asyncio.ensure_future(self._maintain())

    def refresh_table(self, interval: int = 3600) -> None:
        """Replaced by :meth:`_maintain` (the stock one re-schedules itself with call_later)."""

    def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
        self._retries.cancel_all()
        self._stores.cancel_all()
        if self.transport is not None:
            self.transport.close()

    @property
    def proto(self) -> OverlayProtocol:
        if self.protocol is None:
            raise RuntimeError("the DHT node is not listening")
        return self.protocol

    async def _maintain(self) -> None:
        last_republish = time.monotonic()
        while True:
            await asyncio.sleep(self.config.refresh_interval_s)
            try:
                await self._refresh_table()
                if time.monotonic() - last_republish >= self.config.republish_interval_s:
                    last_republish = time.monotonic()
                    await self.republish()
                self.storage.cull()
            except Exception:  # maintenance must keep running
                log.exception("dht_maintenance_failed")

    async def _refresh_table(self) -> None:
        crawls = []
        for node_id in self.proto.get_refresh_ids():
            node = Node(node_id)
            nearest = self.proto.router.find_neighbors(node, self.alpha)
            crawl = OverlayNodeCrawl(self.proto, node, nearest, self.ksize, self.alpha)
            crawls.append(crawl.find())
        if not self.proto.router.contacts():
            return
        crawls.append(self._crawl_nodes(self.node.id))
        await asyncio.gather(*crawls)

    async def republish(self) -> None:
        now = time.time()
        for slot_key, signed in list(self.published.items()):
            if signed.expires_at <= now:
                del self.published[slot_key]
                continue
            await self.set_digest(signed.dht_key, signed.wire)

    # -- joining --------------------------------------------------------------------------

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        ok, reply = await self.proto.rpc(addr, "ping", [])
        if not ok or reply is None:
            return None
        node = Node(node_id_for(reply.sender_key), addr[0], addr[1])
        self.proto.handle_call_response((ok, reply), node)
        return node

    async def bootstrap(self, addrs: list[tuple[str, int]]) -> list[Node]:
        gathered = await asyncio.gather(*(self.bootstrap_node(a) for a in addrs))
        nodes = [n for n in gathered if n is not None and n.id != self.node.id]
        if not nodes:
            return []
        crawl = OverlayNodeCrawl(self.proto, self.node, nodes, self.ksize, self.alpha)
        found: list[Node] = await crawl.find()
        return found

    async def bootstrap_known(self, peers: list[tuple[bytes, str, int]]) -> list[Node]:
        """Rejoin through contacts remembered from a previous run (ids must still match)."""
        alive = []
        for node_id, ip, port in peers:
            node = Node(node_id, ip, port)
            ok, _ = await self.proto.call_ping(node)
            if ok:
                alive.append(node)
        if not alive:
            return []
        found: list[Node] = await OverlayNodeCrawl(
            self.proto, self.node, alive, self.ksize, self.alpha
        ).find()
        return found

    # -- lookups --------------------------------------------------------------------------

    async def _crawl_nodes(self, key: bytes) -> list[Node]:
        node = Node(key)
        nearest = self.proto.router.find_neighbors(node)
        if not nearest:
            return []
        found: list[Node] = await OverlayNodeCrawl(
            self.proto, node, nearest, self.ksize, self.alpha
        ).find()
        return found

    async def get(self, key: bytes, paths: int = 1) -> ValueAnswers:
        """Every valid record under DHT ``key``, newest per slot, merged from close nodes
        (this one included), and each holder's own answer; over ``paths`` disjoint paths."""
        node = Node(key)
        now = time.time()
        local = self.storage.values(key)
        nearest = self.proto.router.find_neighbors(node)
        if not nearest:
            holders = {self.node.id: tuple(local)} if local else {}
            return ValueAnswers(local, holders)

        def verify(wire: object) -> SignedRecord:
            signed: SignedRecord = self.storage.verifier.verify(wire, now)
            return signed

        crawl: OverlayValueCrawl | DisjointValueLookup
        if paths > 1:
            crawl = DisjointValueLookup(self.proto, node, nearest, self.ksize, self.alpha,
                                        self.config.get_quorum, verify, paths)
        else:
            crawl = OverlayValueCrawl(self.proto, node, nearest, self.ksize, self.alpha,
                                      self.config.get_quorum, verify)
        crawl.seed(self.node.id, local)
        found = await crawl.find()
        return ValueAnswers(found, dict(crawl.by_holder))

    async def set(self, key: Any, value: Any) -> bool:
        raise TypeError("the overlay DHT stores signed records only: use put()")

    async def set_digest(self, dkey: bytes, value: bytes) -> PutResult:
        """Store ``value`` (a signed record for ``dkey``) on the k closest nodes and here if
        this node is one of them. Returns how many nodes accepted it and why others refused."""
        signed = self.storage.verifier.verify(value, time.time())
        if signed.dht_key != dkey:
            raise WrongKey("record is for another DHT key")
        result = PutResult()
        target = Node(dkey)
        nodes = await self._crawl_nodes(dkey)
        distances = [n.distance_to(target) for n in nodes]
        if len(nodes) < self.ksize or self.node.distance_to(target) < max(distances, default=0):
            try:
                self.storage.put(dkey, value)
                result.stored += 1
            except RecordError as exc:
                result.refused[exc.reason] += 1
        await self._store_on(nodes, dkey, value, result)
        return result

    async def _store_on(self, nodes: list[Node], dkey: bytes, value: bytes,
                        result: PutResult) -> None:
        """Send ``value`` to every node in ``nodes`` at once and count their answers into
        ``result`` until a majority of k (:meth:`store_quorum`) stored it, or every answer
        is in. The stores still in flight then carry on in the background (their answers
        still update the routing table); a put waits for its slowest holder no longer."""
        stores = [self._stores.spawn(self.proto.call_store(n, dkey, value)) for n in nodes]
        if not stores:
            return
        quorum = self.store_quorum()
        left = len(stores)
        enough = asyncio.get_running_loop().create_future()

        def count(store: asyncio.Future[tuple[bool, Any]]) -> None:
            nonlocal left
            left -= 1
            if enough.done():
                return  # answered after the put returned: no longer its result's
            ok, reply = (False, None) if store.cancelled() or store.exception() is not None \
                else store.result()
            if not ok or not isinstance(reply, Reply) or not isinstance(reply.payload, dict):
                result.refused["unreachable"] += 1
            elif reply.payload.get("ok") is True:
                result.stored += 1
                result.remote += 1
            else:
                reason = reply.payload.get("reason")
                result.refused[reason if isinstance(reason, str) else "refused"] += 1
            if result.remote >= quorum or not left:
                enough.set_result(None)

        for store in stores:
            store.add_done_callback(count)
        await enough

    def store_quorum(self) -> int:
        """Remote holders a put waits for: a majority of k (11 of 20). The record is then
        held by more than half of the k closest nodes, so a name lookup's majority rule
        (:mod:`overlay.dht.names`) can already decide for it; fewer holders acknowledged
        (a small network, refusals) and the put waits for every answer, as before."""
        return self.config.ksize // 2 + 1

    async def publish(self, signed: SignedRecord) -> PutResult:
        result = await self.set_digest(signed.dht_key, signed.wire)
        if result.stored:
            self.published[(signed.dht_key, signed.slot)] = signed
            if not result.remote and self.proto.router.contacts():
                self.stats.puts_local_only += 1
                self._retries.spawn(self._replicate(signed))
        return result

    async def _replicate(self, signed: SignedRecord) -> None:
        """Store ``signed`` on other nodes after all, while it is still the published record
        for its slot; the regular republish takes over when the retries run out."""
        slot = (signed.dht_key, signed.slot)
        for delay in self.config.replicate_retry_s:
            await asyncio.sleep(delay)
            if self.published.get(slot) is not signed or signed.expires_at <= time.time():
                self.stats.replication["superseded"] += 1
                return
            try:
                result = await self.set_digest(signed.dht_key, signed.wire)
            except RecordError:
                self.stats.replication["superseded"] += 1  # a newer one is stored here
                return
            if result.remote:
                self.stats.replication["replicated"] += 1
                return
        self.stats.replication["gave_up"] += 1
        log.warning("record_not_replicated", key=signed.dht_key.hex()[:16],
                    tries=len(self.config.replicate_retry_s),
                    hint="no other DHT node accepted it; it is retried at the next republish")

    # -- state ----------------------------------------------------------------------------

    def peers_snapshot(self) -> list[dict[str, Any]]:
        return [
            {"id": n.id.hex(), "host": n.ip, "port": n.port}
            for n in self.proto.router.contacts()
        ]

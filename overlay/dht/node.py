"""The narrow DHT interface the rest of the overlay uses: start, bootstrap, put, get, closest,
call. Nothing outside :mod:`overlay.dht` imports ``kademlia``."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kademlia.node import Node

from overlay.core.addresses import network_key
from overlay.core.directory_keys import SHARD_KEYS, SHARDS, directory_key
from overlay.core.files import write_private_json
from overlay.core.identity import Identity, node_id_for
from overlay.core.logs import get_logger
from overlay.core.records import RecordError, SignedRecord, SupernodeRecord
from overlay.dht.config import DHTConfig, DHTStats
from overlay.dht.directory import choose, round_robin
from overlay.dht.errors import DHTError
from overlay.dht.protocol import AppHandler, OverlayProtocol
from overlay.dht.replay import ANY_METHODS
from overlay.dht.server import OverlayServer, PutResult, ValueAnswers
from overlay.dht.storage import RecordStorage, StorageLimits

log = get_logger(__name__)

PEERS_FILE = "peers.json"
#: random directory shards a :meth:`DHTNode.supernodes` read looks up besides its own
DIRECTORY_READ_SHARDS = 2


@dataclass(frozen=True)
class Contact:
    node_id: bytes
    host: str
    port: int


class PutFailed(DHTError):
    """No node accepted a record. ``result`` says why each refused."""

    def __init__(self, result: PutResult) -> None:
        reasons = ", ".join(f"{k}={v}" for k, v in result.refused.most_common()) or "no nodes"
        super().__init__(f"no node stored the record ({reasons})")
        self.result = result


class DHTNode:
    def __init__(
        self,
        identity: Identity,
        config: DHTConfig | None = None,
        limits: StorageLimits | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.identity = identity
        self.config = config or DHTConfig()
        self.state_dir = state_dir
        self.stats = DHTStats()
        self.storage = RecordStorage(limits)
        self._handlers: dict[str, AppHandler] = {}
        self._server = OverlayServer(
            identity, self.config, self.storage, self.stats, self._handlers
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        await self._server.listen(port, interface=host)

    @property
    def address(self) -> tuple[str, int]:
        return (self._server.node.ip, self._server.node.port)

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    @property
    def _proto(self) -> OverlayProtocol:
        return self._server.proto

    def stop(self) -> None:
        if self._server.protocol is not None and self.state_dir is not None:
            self.save_peers()
        self._server.stop()

    async def bootstrap(self, addrs: list[tuple[str, int]]) -> int:
        """Join through the given addresses; falls back to peers saved in the state dir.
        Returns the number of contacts in the routing table afterwards."""
        alone = self.routing_table_size == 0
        if addrs:
            await self._server.bootstrap(addrs)
        if not self.routing_table_size and self.state_dir is not None:
            saved = self.load_peers()
            if saved:
                await self._server.bootstrap_known(saved)
        if alone and self.routing_table_size:
            # what this node published while it knew nobody (a supernode whose bootstrap
            # node was not up yet) reached no other node: publish it now, not at the next
            # republish minutes later
            await self._server.republish()
        return self.routing_table_size

    # -- records --------------------------------------------------------------------------

    async def put(self, signed: SignedRecord) -> PutResult:
        """Publish a record this node is responsible for; it republishes it until expiry.
        Raises :class:`PutFailed` when no node (this one included) accepted it."""
        result = await self._server.publish(signed)
        if not result.stored:
            raise PutFailed(result)
        return result

    async def get(self, key: bytes) -> list[SignedRecord]:
        """Every valid record under ``key``, newest per slot, merged from its holders."""
        return (await self._server.get(key)).records

    async def get_answers(self, key: bytes) -> ValueAnswers:
        """:meth:`get`, with each holder's own answer kept (for majority decisions), over
        ``config.name_lookup_paths`` disjoint paths."""
        return await self._server.get(key, self.config.name_lookup_paths)

    async def directory_shard(self, key: bytes, limit: int) -> list[SignedRecord]:
        """The records under one directory (shard) key as readers use them: those its
        holders list (proven by dial-backs), vouched for by two holders, spread over
        networks, at most ``limit`` (:func:`overlay.dht.directory.choose`)."""
        answers = await self.get_answers(key)
        per_network = self.storage.limits.directory.listed_per_network
        return choose(answers.records, answers.holders, per_network, limit, self.storage.rng)

    def listed_supernodes(self) -> list[SignedRecord]:
        """The live supernode records this node lists itself (no lookup)."""
        now = time.time()
        return [s for s in self.storage.directory.listed() if s.expires_at > now]

    async def supernodes(self, limit: int, of: Iterable[str] = (),
                         shards: int = DIRECTORY_READ_SHARDS) -> list[SignedRecord]:
        """A sample of the supernode directory at a constant cost whatever its size: the
        records this node lists itself (under the keys it is close to: about k records on
        average, every one in a network of fewer than k public nodes), ``shards`` random
        shards read from their holders, and the shards of the supernodes at the addresses in
        ``of`` (a reader checking those); spread over networks, at most ``limit``. A shard
        that cannot be read adds nothing."""
        keys = {directory_key(host) for host in of}
        rng = self.storage.rng
        keys.update(SHARD_KEYS[s] for s in rng.sample(range(SHARDS), min(shards, SHARDS)))
        reads = await asyncio.gather(*(self.directory_shard(k, limit) for k in keys),
                                     return_exceptions=True)
        now = time.time()
        merged: dict[tuple[bytes, str], SignedRecord] = {}
        for found in [self.listed_supernodes(), *reads]:
            if isinstance(found, BaseException):
                continue
            for signed in found:
                held = merged.get(signed.slot)
                if signed.expires_at > now and (held is None or signed.seq > held.seq):
                    merged[signed.slot] = signed
        per_network = self.storage.limits.directory.listed_per_network
        ranked = [(network_key(s.record.host), 0, s) for s in merged.values()
                  if isinstance(s.record, SupernodeRecord)]
        return round_robin(ranked, per_network, limit, rng)

    async def closest(self, key: bytes) -> list[Contact]:
        nodes = await self._server._crawl_nodes(key)
        return [Contact(n.id, n.ip, n.port) for n in nodes]

    def store_local(self, wire: bytes, key: bytes) -> SignedRecord:
        """Validate and store a record here only (raises :class:`RecordError`)."""
        return self.storage.put(key, wire)

    def forget_published(self, signed: SignedRecord) -> None:
        self._server.published.pop((signed.dht_key, signed.slot), None)

    # -- application calls ----------------------------------------------------------------

    def register(self, method: str, handler: AppHandler) -> None:
        """Serve ``method`` to other nodes: handler(addr, sender_key, args) -> msgpack value."""
        if method in {"ping", "store", "find_node", "find_value"}:
            raise ValueError(f"{method} is a core DHT method")
        self._handlers[method] = handler

    async def call(
        self, addr: tuple[str, int], method: str, *args: Any, node_id: bytes | None = None
    ) -> Any:
        """Call ``method`` on the node at ``addr``; raises TimeoutError when it does not answer.

        Requests name their recipient (:mod:`overlay.dht.replay`): without ``node_id``, a
        method other than ``ping``/``find_node`` first pings ``addr`` to learn whose it is."""
        if node_id is None and method not in ANY_METHODS:
            ok, pong = await self._proto.rpc(addr, "ping", [])
            if not ok or pong is None:
                raise TimeoutError(f"{addr[0]}:{addr[1]} did not answer ping")
            node_id = node_id_for(pong.sender_key)
        ok, reply = await self._proto.rpc(addr, method, list(args), expected_id=node_id)
        if not ok or reply is None:
            raise TimeoutError(f"{addr[0]}:{addr[1]} did not answer {method}")
        return reply.payload

    # -- introspection --------------------------------------------------------------------

    @property
    def routing_table_size(self) -> int:
        return len(self._proto.router)

    def contacts_refused(self) -> dict[str, Counter[str]]:
        """Contacts the Sybil limits kept out, by where (``table``, ``lookup``) and reason."""
        return {"table": Counter(self._proto.router.refused),
                "lookup": Counter(self.stats.lookup_contacts_refused)}

    def contacts(self) -> list[Contact]:
        return [Contact(n.id, n.ip, n.port) for n in self._proto.router.contacts()]

    def knows(self, node_id: bytes) -> bool:
        return not self._proto.router.is_new_node(Node(node_id))

    # -- state ----------------------------------------------------------------------------

    def save_peers(self) -> None:
        if self.state_dir is None or self._server.protocol is None:
            return
        peers = self._server.peers_snapshot()
        if not peers:
            return
        write_private_json(self.state_dir / PEERS_FILE, {"version": 1, "peers": peers})

    def load_peers(self) -> list[tuple[bytes, str, int]]:
        if self.state_dir is None:
            return []
        path = self.state_dir / PEERS_FILE
        try:
            data = json.loads(path.read_text())
            peers = [
                (bytes.fromhex(p["id"]), str(p["host"]), int(p["port"]))
                for p in data["peers"][:200]
            ]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("peers_file_unreadable", path=str(path), error=str(exc))
            return []
        return [p for p in peers if len(p[0]) == 20]


__all__ = [
    "Contact", "DHTConfig", "DHTNode", "PutFailed", "PutResult", "RecordError", "ValueAnswers",
]

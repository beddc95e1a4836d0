"""The supernode directory, eclipsed (issue 12: "Directory eclipse").

The network is real and in process on loopback: a bootstrap node and 8 honest supernodes
(this library's ``NodeDaemon``/``Supernode``), each on its own /24. The attacker ("mallory")
has only what anyone has: throwaway keys, DHT nodes of her own on three /24s sending the
documented ``store`` over UDP, and TCP servers of her own. She stores, at every node, 1,000
self-signed supernode records from throwaway keys with the newest ``issued_at`` a holder
accepts (now + 50 s), at addresses in /24s chosen so that the records fall into the directory
shards of the honest supernodes (a record's shard is its advertised /24's,
:mod:`overlay.core.directory_keys`), advertising:

* addresses where nothing listens (half of them);
* servers of hers (one per targeted shard) that answer the attachment handshake, but with
  another key;
* and 6 servers that *do* hold their records' keys, all on one /24.

What a user would notice, and what must hold:

* the directory a client fetches from the bootstrap node (``DirectoryRequest``, as
  ``overlay client`` does) and every node's UDP ``find_value`` answer for the directory keys
  still list every honest supernode, and no record whose address did not prove its key; at
  most 4 supernodes of one /24 are listed;
* a client's discovery (``Discovery``: the bootstrap directory, probes, ranking) attaches to
  an honest supernode;
* a supernode started after the flood is listed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from overlay.attach.adapter import ClientSession
from overlay.client.discovery import Discovery
from overlay.client.host_cache import HostCache
from overlay.client.links import Links
from overlay.client.options import ClientOptions
from overlay.core import records
from overlay.core.directory_keys import directory_key
from overlay.core.identity import Identity
from overlay.dht import DHTConfig, DHTNode
from overlay.node.daemon import NodeDaemon, NodeOptions
from overlay.node.supernode import Supernode, SupernodeOptions
from overlay.node.tcp_service import ServiceLimits, TcpService
from tests.helpers.netutil import loopback_ips, network_config, wait_for

HONEST = 8
JUNK = 1000
SYBILS = 6  # mallory's servers that do hold their keys, on one /24
PER_NETWORK = 4  # the documented default: listed supernodes per /24
#: an in-process network: the test puzzle (4 bits), which mallory's DHT nodes pay too
CONFIG = network_config()
#: the bootstrap node re-reads the directory for every request (no 5 s cache)
LIMITS = ServiceLimits(directory_cache_s=0.05)


def net_in_shard(shard_key: bytes, avoid: str, taken: set[str]) -> str:
    """A loopback /24 ("127.a.b", not in the /16 ``avoid`` nor in ``taken``) whose
    supernode records go under ``shard_key``."""
    for a in range(2, 252):
        for b in range(256):
            net = f"127.{a}.{b}"
            if (not f"{net}.".startswith(f"{avoid}.") and net not in taken
                    and directory_key(f"{net}.1") == shard_key):
                taken.add(net)
                return net
    raise AssertionError("no loopback /24 in that shard")


def net24(ip: str) -> str:
    return ip.rsplit(".", 1)[0]


async def start_supernode(ip: str, boot: tuple[str, int]) -> Supernode:
    node = Supernode(NodeOptions(listen=(ip, 0), bootstrap=[boot], dht=CONFIG, limits=LIMITS),
                     SupernodeOptions(vivaldi_interval_s=0))
    await node.start()
    return node


async def directory(address: tuple[str, int]) -> list[records.SignedRecord]:
    """The directory as a client fetches it: a lookup-only session, records verified."""
    session = await ClientSession.connect(*address, Identity.generate(), expected_node_key=None,
                                          lookup_only=True, timeout=5)
    try:
        return await session.directory(timeout=10)
    finally:
        session.close()


def keys_of(found: list[records.SignedRecord]) -> set[bytes]:
    return {s.record.node_key for s in found if isinstance(s.record, records.SupernodeRecord)}


class Mallory:
    """Her DHT nodes (two IPs on each of three /24s) and her TCP servers."""

    def __init__(self, base: str, targets: list[bytes]) -> None:
        self.base = base
        #: the directory keys she floods (the honest supernodes' shards)
        self.targets = targets
        self.senders = [DHTNode(Identity.generate_node(CONFIG.id_puzzle_bits), CONFIG)
                        for _ in range(6)]
        self.servers: list[TcpService] = []
        self.junk: list[records.SignedRecord] = []
        self.sybils: list[records.SignedRecord] = []

    async def start(self) -> None:
        for i, node in enumerate(self.senders):
            await node.start(f"{self.base}.{66 + i % 3}.{1 + i // 3}", 0)
        # per targeted shard, a /24 of hers: dead addresses, and a server answering the
        # handshake with its own key, not the records'
        taken: set[str] = set()
        nets = [net_in_shard(t, self.base, taken) for t in self.targets]
        liars = [await self.serve(Identity.generate(), f"{net}.200") for net in nets]
        future = time.time() + 50  # the newest issued_at a holder takes (60 s skew)
        for i in range(JUNK):
            t = i % len(nets)
            host, port = ((f"{nets[t]}.{1 + (i // len(nets)) % 199}", 9) if i % 2
                          else liars[t])
            self.junk.append(records.supernode(Identity.generate(), host, port, seq=1,
                                               lifetime_s=86_000, now=future))
        # her servers holding their keys, on one /24: in the first honest supernode's shard
        sybil_net = net_in_shard(self.targets[0], self.base, taken)
        for i in range(SYBILS):
            key = Identity.generate()
            host, port = await self.serve(key, f"{sybil_net}.{1 + i}")
            self.sybils.append(records.supernode(key, host, port, seq=1, lifetime_s=86_000,
                                                 now=future))

    async def serve(self, identity: Identity, ip: str) -> tuple[str, int]:
        """A TCP server that completes the (lookup-only) handshake with ``identity``."""
        server = TcpService(identity, DHTNode(identity, CONFIG))
        await server.start(ip, 0)
        self.servers.append(server)
        assert server._server is not None
        port: int = server._server.sockets[0].getsockname()[1]
        return ip, port

    async def flood(self, holders: list[DHTNode]) -> list[object]:
        """Every record at every holder, by UDP ``store``; the answers."""
        # each holder gets the records from all six senders in turn (three /24s)
        calls = [(self.senders[i % len(self.senders)], h, s)
                 for i, s in enumerate([*self.sybils, *self.junk]) for h in holders]
        answers: list[object] = []
        for start in range(0, len(calls), 300):
            answers += await asyncio.gather(*(
                sender.call(h.address, "store", s.dht_key, s.wire, node_id=h.node_id)
                for sender, h, s in calls[start:start + 300]), return_exceptions=True)
        return answers

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        for node in self.senders:
            node.stop()


async def test_junk_supernode_records_neither_hide_honest_ones_nor_lock_newcomers_out(
    tmp_path: Path,
) -> None:
    base = loopback_ips(1)[0].rsplit(".", 2)[0]  # "127.a": every /24 below is ours
    boot = NodeDaemon(NodeOptions(listen=(f"{base}.1.1", 0), dht=CONFIG, limits=LIMITS))
    await boot.start()
    honest: list[Supernode] = []
    mallory: Mallory | None = None
    newcomer: Supernode | None = None
    reader: DHTNode | None = None
    try:
        for i in range(HONEST):
            honest.append(await start_supernode(f"{base}.{10 + i}.1", boot.dht.address))
        honest_keys = {sn.identity.public_key for sn in honest}
        shards = sorted({directory_key(sn.advertised[0]) for sn in honest})
        mallory = Mallory(base, shards)

        async def all_listed() -> bool:
            return honest_keys <= keys_of(await directory(boot.dht.address))

        await wait_for(all_listed, timeout=30, interval=0.2)
        holders = [boot.dht, *(sn.dht for sn in honest)]
        reader = DHTNode(Identity.generate(), DHTConfig(refresh_interval_s=3600, client=True))
        await reader.start(f"{base}.2.1", 0)

        async def served_by(holder: DHTNode) -> set[bytes]:
            """The node keys of the records ``holder`` answers UDP ``find_value``s for the
            honest supernodes' directory keys with."""
            out: set[bytes] = set()
            for shard in shards:
                reply = await reader.call(holder.address, "find_value", shard,
                                          node_id=holder.node_id)
                out |= {records.verify(w).record.node_key for w in reply["values"]}
            return out

        # what each holder served before the attack (not every node holds every record)
        before = [await served_by(holder) for holder in holders]
        assert set().union(*before) == honest_keys

        await mallory.start()
        answers = await mallory.flood(holders)
        assert len(answers) == (JUNK + SYBILS) * len(holders)
        junk_keys = keys_of(mallory.junk)
        sybil_keys = keys_of(mallory.sybils)

        # the directory a client gets: every honest supernode, nothing unproven
        found = keys_of(await directory(boot.dht.address))
        hidden = honest_keys - found
        assert not hidden, f"{len(hidden)} of {HONEST} honest supernodes hidden by the junk"
        listed_junk = found & junk_keys
        assert not listed_junk, f"{len(listed_junk)} junk records listed"

        # mallory's 6 servers that hold their keys, on one /24: once every holder proved all
        # 6 (one dial-back per 5 s per target /24 after a burst of 4), 4 are listed, 2 wait on
        # standby (what /metrics shows as overlay_directory_records{state="standby"})
        await wait_for(lambda: all(h.storage.directory.counts()["standby"] >= SYBILS - PER_NETWORK
                                   for h in holders), timeout=30, interval=0.5)
        found = keys_of(await directory(boot.dht.address))
        assert honest_keys <= found and not found & junk_keys
        assert len(found & sybil_keys) <= PER_NETWORK, (
            f"{len(found & sybil_keys)} supernodes of one /24 listed")

        # every holder's own UDP answer: what it served before, no junk
        for holder, earlier in zip(holders, before, strict=True):
            served = await served_by(holder)
            assert earlier <= served, (
                f"holder {holder.address[0]} hides {len(earlier - served)} honest supernodes")
            assert not served & junk_keys, (
                f"holder {holder.address[0]} serves {len(served & junk_keys)} junk records")
            assert len(served & sybil_keys) == PER_NETWORK, (
                f"holder {holder.address[0]} serves {len(served & sybil_keys)} supernodes of "
                f"one /24")

        # a client's own discovery attaches to an honest supernode
        opts = ClientOptions("alice", tmp_path / "alice.key", bootstrap=[boot.dht.address])
        discovery = Discovery(opts, HostCache(tmp_path / "hosts.json"), Links())
        ranked = await discovery.discover(exclude=set())
        assert ranked, "discovery found no usable supernode"
        best = ranked[0]
        assert best.node_key in honest_keys, "discovery chose a supernode that is not honest"
        alice = Identity.generate()
        session = await ClientSession.connect(best.host, best.port, alice,
                                              expected_node_key=best.node_key, user="alice",
                                              device="laptop", timeout=5)
        try:
            presence = records.presence(alice, "alice", "laptop", seq=1,
                                        supernode_key=best.node_key, supernode_host=best.host,
                                        supernode_port=best.port)
            await session.attach(presence, timeout=5)
        finally:
            session.close()

        # a supernode that starts after the flood is listed
        newcomer = await start_supernode(f"{base}.30.1", boot.dht.address)
        new_key = newcomer.identity.public_key

        async def newcomer_listed() -> bool:
            return new_key in keys_of(await directory(boot.dht.address))

        await wait_for(newcomer_listed, timeout=30, interval=0.3)
    finally:
        if newcomer is not None:
            await newcomer.stop()
        if mallory is not None:
            await mallory.stop()
        if reader is not None:
            reader.stop()
        for sn in honest:
            await sn.stop()
        await boot.stop()

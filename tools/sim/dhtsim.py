"""The real ``overlay.dht`` in the simulated world: supernodes join, publish their users'
presence, and look users up.

Workload (every time virtual, every draw from the run's seeded RNGs):

* supernodes (one :class:`overlay.dht.DHTNode` per simulated host, on port :data:`DHT_PORT`)
  start at uniform random times in [0, ``join_window_s``]; the first
  :data:`BOOTSTRAP_NODES` start at 0 and are every node's bootstrap list, as a deployment's
  bootstrap hosts are;
* users are spread uniformly over the supernodes (the attach policy does not run yet). Once
  its supernode has joined, every ``presence_refresh_s`` (the client's default, 300 s) a user's
  presence record is signed afresh (next sequence number, lifetime 3 x refresh, as
  :class:`overlay.client.presence.PresenceSigner` does) and published by its supernode with
  ``DHTNode.put`` (which also republishes it on the DHT's own schedule);
* after warm-up (join window + one refresh period) every user looks up a random other user
  ``lookups_per_user_h`` times an hour on average (Poisson), through its supernode
  (``DHTNode.get``). A lookup succeeds when the other user's presence record comes back.

Measured per lookup: virtual seconds, and hops: the depth, in the lookup's own graph, of the
nearest node that answered with the record (depth 1: a node from the asker's routing table;
depth d + 1: a node first listed by a depth-d node's answer; 0: the asker held it). Traffic:
datagrams and bytes (IP/UDP headers included) each supernode host sent during the
measurement window (warm-up end to run end).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from overlay.core import records
from overlay.core.identity import Identity, id_puzzle_ok, node_id_for
from overlay.dht import DHTConfig, DHTNode
from tools.sim.clock import SIM_EPOCH
from tools.sim.net import Host, SimNet

DHT_PORT = 4000
BOOTSTRAP_NODES = 4
#: the client's presence refresh (overlay.client.options.ClientOptions.presence_refresh_s)
PRESENCE_REFRESH_S = 300.0


def grind_identity(rng: random.Random, puzzle_bits: int) -> Identity:
    """:meth:`Identity.generate_node` with seeds from ``rng`` (deterministic)."""
    while True:
        identity = Identity.from_seed(rng.randbytes(32))
        if id_puzzle_ok(node_id_for(identity.public_key), puzzle_bits):
            return identity


@dataclass
class Supernode:
    host: Host
    dht: DHTNode
    users: list[User] = field(default_factory=list)
    joined: bool = False


@dataclass
class User:
    index: int
    identity: Identity
    name: str
    supernode: Supernode
    seq: int = 0

    @property
    def key(self) -> bytes:
        """The DHT key of this user's presence records."""
        return records.user_key(self.name)


@dataclass
class Lookup:
    started: float
    seconds: float
    ok: bool
    hops: int | None


class HopTrace:
    """Depths of the nodes one value lookup asked (see the module docstring)."""

    def __init__(self, local_hit: bool) -> None:
        self.depth: dict[bytes, int] = {}
        self.best: int | None = 0 if local_hit else None

    def asked(self, node_id: bytes) -> int:
        return self.depth.setdefault(node_id, 1)

    def answered(self, node_id: bytes, payload: Any) -> None:
        d = self.depth.get(node_id, 1)
        if not isinstance(payload, dict):
            return
        if payload.get("values"):
            self.best = d if self.best is None else min(self.best, d)
        for item in payload.get("nodes") or ():
            if isinstance(item, list) and item and isinstance(item[0], bytes):
                self.depth.setdefault(item[0], d + 1)


def trace_find_value(dht: DHTNode, traces: dict[bytes, HopTrace]) -> None:
    """Wrap ``dht``'s protocol's ``call_find_value`` (an instance attribute: the class is
    untouched) to feed the :class:`HopTrace` of the key being looked up, if any."""
    proto: Any = dht._proto
    real: Callable[..., Awaitable[tuple[bool, Any]]] = proto.call_find_value

    async def call_find_value(node_to_ask: Any, node_to_find: Any, *rest: Any) -> Any:
        trace = traces.get(node_to_find.id)
        if trace is not None:
            trace.asked(node_to_ask.id)
        ok, reply = await real(node_to_ask, node_to_find, *rest)
        if trace is not None and ok and reply is not None:
            trace.answered(node_to_ask.id, getattr(reply, "payload", None))
        return ok, reply

    proto.call_find_value = call_find_value


@dataclass
class DhtWorkload:
    supernodes: int
    users: int
    duration_s: float
    seed: int
    config: DHTConfig
    join_window_s: float = 600.0
    presence_refresh_s: float = PRESENCE_REFRESH_S
    lookups_per_user_h: float = 1.0


class DhtSim:
    """Builds the network on ``net`` and runs :class:`DhtWorkload`; results in attributes."""

    def __init__(self, net: SimNet, work: DhtWorkload) -> None:
        self.net = net
        self.work = work
        self.rng = random.Random(work.seed)
        self.nodes: list[Supernode] = []
        self.users: list[User] = []
        self.lookups: list[Lookup] = []
        self.traces: dict[int, dict[bytes, HopTrace]] = {}
        self.warmup_end = min(work.join_window_s + work.presence_refresh_s,
                              work.duration_s / 2)
        self.window_counts: dict[int, tuple[int, int]] = {}
        self.publish_failures = 0

    def build(self) -> None:
        key_rng = random.Random(self.rng.getrandbits(64))
        for _ in range(self.work.supernodes):
            host = self.net.add_host()
            dht = DHTNode(grind_identity(key_rng, self.work.config.id_puzzle_bits),
                          self.work.config)
            dht.storage.clock = self._wall  # bound at import time: see tools/sim/clock.py
            dht.storage.rng = random.Random(self.rng.getrandbits(64))
            self.nodes.append(Supernode(host, dht))
        for j in range(self.work.users):
            sn = self.nodes[self.rng.randrange(len(self.nodes))]
            user = User(j, Identity.from_seed(key_rng.randbytes(32)), f"user{j}", sn)
            sn.users.append(user)
            self.users.append(user)

    def _wall(self) -> float:
        return SIM_EPOCH + self.net.loop.time()

    async def run(self) -> None:
        loop = self.net.loop
        boot = [(sn.host.ip, DHT_PORT) for sn in self.nodes[:BOOTSTRAP_NODES]]
        for i, sn in enumerate(self.nodes):
            at = 0.0 if i < BOOTSTRAP_NODES else self.rng.uniform(0, self.work.join_window_s)
            self.net.spawn(sn.host, self._supernode_life(sn, at, boot))
        loop.call_at(self.warmup_end, self._snapshot_counters)
        await asyncio.sleep(self.work.duration_s)

    def _snapshot_counters(self) -> None:
        for sn in self.nodes:
            self.window_counts[sn.host.index] = (sn.host.sent_datagrams, sn.host.sent_bytes)

    async def _supernode_life(self, sn: Supernode, at: float,
                              boot: list[tuple[str, int]]) -> None:
        await asyncio.sleep(at)
        await sn.dht.start(sn.host.ip, DHT_PORT)
        self.traces[sn.host.index] = traces = {}
        trace_find_value(sn.dht, traces)
        others = [a for a in boot if a[0] != sn.host.ip]
        if others:
            await sn.dht.bootstrap(others)
        sn.joined = True
        rng = random.Random(self.rng.getrandbits(64))
        for user in sn.users:
            phase = rng.uniform(0, self.work.presence_refresh_s)
            self.net.spawn(sn.host, self._presence(sn, user, phase))
            self.net.spawn(sn.host, self._lookups(sn, user, random.Random(rng.getrandbits(64))))

    async def _presence(self, sn: Supernode, user: User, phase: float) -> None:
        await asyncio.sleep(phase)
        while True:
            user.seq += 1
            signed = records.presence(
                user.identity, user.name, "phone", seq=user.seq,
                supernode_key=sn.dht.identity.public_key, supernode_host=sn.host.ip,
                supernode_port=DHT_PORT, lifetime_s=3 * self.work.presence_refresh_s,
            )
            try:
                await sn.dht.put(signed)
            except Exception:
                self.publish_failures += 1
            await asyncio.sleep(self.work.presence_refresh_s)

    async def _lookups(self, sn: Supernode, user: User, rng: random.Random) -> None:
        loop = self.net.loop
        rate = self.work.lookups_per_user_h / 3600.0
        if rate <= 0 or len(self.users) < 2:
            return
        await asyncio.sleep(max(0.0, self.warmup_end - loop.time()))
        while True:
            await asyncio.sleep(rng.expovariate(rate))
            other = self.users[rng.randrange(len(self.users))]
            if other is user:
                continue
            await self._lookup(sn, other)

    async def _lookup(self, sn: Supernode, other: User) -> None:
        loop = self.net.loop
        key = other.key
        trace = HopTrace(local_hit=bool(sn.dht.storage.values(key)))
        traces = self.traces[sn.host.index]
        traces[key] = trace
        started = loop.time()
        try:
            found = await sn.dht.get(key)
        except Exception:
            found = []
        finally:
            traces.pop(key, None)
        ok = any(r.record.signer == other.identity.public_key for r in found)
        self.lookups.append(Lookup(started, loop.time() - started, ok,
                                   trace.best if ok else None))


"""The real ``overlay.dht`` in the simulated world: supernodes join (and churn), publish their
users' presence, and look users up.

Workload (every time virtual, every draw from the run's seeded RNGs):

* supernodes (one :class:`overlay.dht.DHTNode` per simulated host, on port :data:`DHT_PORT`)
  join at uniform random times in [0, ``join_window_s``]; the first :data:`BOOTSTRAP_NODES`
  start at 0, never churn, and are every node's bootstrap list. Under churn
  (:mod:`tools.sim.churn`) a supernode's session ends with its host failing (no goodbye); a
  returning supernode is a new ``DHTNode`` with the same key and IP (empty storage, joining
  through the bootstrap list);
* a user online attaches to a uniformly random live supernode (the real attach policy does not
  run yet); every ``presence_refresh_s`` (the client's default, 300 s) its presence record is
  signed afresh (next sequence number, lifetime 3 x refresh, as
  :class:`overlay.client.presence.PresenceSigner` does) and published by that supernode with
  ``DHTNode.put`` (which also republishes it on the DHT's own schedule). When its supernode
  fails, the user re-attaches elsewhere after ``rehome_s`` (a stand-in for client failover,
  which is not simulated yet); a user going offline just stops (no offline record yet);
* after warm-up (join window + one refresh period, at most half the run), lookups arrive as
  one Poisson process of rate ``lookups_per_user_h`` x online users: a random online user
  looks up another random online user whose first record went out, through its supernode
  (``DHTNode.get``). A lookup succeeds when a presence record of that user naming its current
  supernode comes back.

Measured per lookup: virtual seconds, and hops: the depth, in the lookup's own graph, of the
nearest node that answered with the record (depth 1: a node from the asker's routing table;
depth d + 1: a node first listed by a depth-d node's answer; 0: the asker held it). Traffic:
datagrams and bytes (IP/UDP headers included) each supernode host sent during the
measurement window (warm-up end to run end), per second it was up in that window.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from overlay.core import records
from overlay.core.identity import Identity, id_puzzle_ok, node_id_for
from overlay.dht import DHTConfig, DHTNode
from tools.sim.churn import NONE, ChurnModel
from tools.sim.clock import SIM_EPOCH
from tools.sim.net import Host, SimNet

DHT_PORT = 4000
BOOTSTRAP_NODES = 4
#: the client's presence refresh (overlay.client.options.ClientOptions.presence_refresh_s)
PRESENCE_REFRESH_S = 300.0
#: a user's wait for a live supernode when none is up yet
ATTACH_RETRY_S = 10.0


def grind_identity(rng: random.Random, puzzle_bits: int) -> Identity:
    """:meth:`Identity.generate_node` with seeds from ``rng`` (deterministic)."""
    while True:
        identity = Identity.from_seed(rng.randbytes(32))
        if id_puzzle_ok(node_id_for(identity.public_key), puzzle_bits):
            return identity


@dataclass(eq=False)
class Supernode:
    index: int
    host: Host
    identity: Identity
    dht: DHTNode | None = None
    joined: bool = False
    users: set[User] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    traces: dict[bytes, HopTrace] = field(default_factory=dict)
    #: seconds up inside the measurement window, and since when it is up (None: down)
    window_up_s: float = 0.0
    up_since: float | None = None
    #: failed in a mass failure: never comes back
    retired: bool = False
    #: the real supernode daemon around ``dht`` (:mod:`tools.sim.daemonsim`), if any
    daemon: Any = None


@dataclass(eq=False)
class User:
    index: int
    identity: Identity
    name: str
    supernode: Supernode | None = None
    task: asyncio.Task[Any] | None = None
    seq: int = 0
    online: bool = False
    #: this user's real client daemon and host (:mod:`tools.sim.daemonsim`), if any
    client: Any = None
    host: Host | None = None

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


class OnlineUsers:
    """The users online now: add, remove and draw one at random in O(1)."""

    def __init__(self) -> None:
        self.users: list[User] = []
        self.at: dict[int, int] = {}

    def add(self, user: User) -> None:
        self.at[user.index] = len(self.users)
        self.users.append(user)

    def remove(self, user: User) -> None:
        i = self.at.pop(user.index)
        last = self.users.pop()
        if last is not user:
            self.users[i] = last
            self.at[last.index] = i

    def draw(self, rng: random.Random) -> User:
        return self.users[rng.randrange(len(self.users))]

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class DhtWorkload:
    supernodes: int
    users: int
    duration_s: float
    seed: int
    config: DHTConfig
    churn: ChurnModel = NONE
    join_window_s: float = 600.0
    presence_refresh_s: float = PRESENCE_REFRESH_S
    lookups_per_user_h: float = 1.0
    rehome_s: float = 30.0
    #: a progress line to stderr every this many simulated seconds (0: none)
    progress_s: float = 0.0


class DhtSim:
    """Builds the network on ``net`` and runs :class:`DhtWorkload`; results in attributes."""

    def __init__(self, net: SimNet, work: DhtWorkload) -> None:
        self.net = net
        self.work = work
        self.rng = random.Random(work.seed)
        self.churn_rng = random.Random(self.rng.getrandbits(64))
        self.nodes: list[Supernode] = []
        self.live: list[Supernode] = []
        self.users: list[User] = []
        self.online = OnlineUsers()
        self.lookups: list[Lookup] = []
        self.warmup_end = min(work.join_window_s + work.presence_refresh_s,
                              work.duration_s / 2)
        self.window_counts: dict[int, tuple[int, int]] = {}
        self.publish_failures = 0
        self.mass_failed = 0

    # -- setup ----------------------------------------------------------------------------

    def build(self) -> None:
        key_rng = random.Random(self.rng.getrandbits(64))
        for i in range(self.work.supernodes):
            identity = grind_identity(key_rng, self.work.config.id_puzzle_bits)
            self.nodes.append(Supernode(i, self.net.add_host(), identity))
        for j in range(self.work.users):
            self.users.append(User(j, Identity.from_seed(key_rng.randbytes(32)), f"user{j}"))

    def _wall(self) -> float:
        return SIM_EPOCH + self.net.loop.time()

    async def run(self) -> None:
        loop, end, rng = self.net.loop, self.work.duration_s, self.churn_rng
        churn = self.work.churn
        for sn in self.nodes:
            if sn.index < BOOTSTRAP_NODES:
                sessions = [(0.0, end)]
            else:
                sessions = churn.supernode_sessions(rng.uniform(0, self.work.join_window_s),
                                                    end, rng)
            for start, stop in sessions:
                loop.call_at(start, self._supernode_up, sn)
                if stop < end:
                    loop.call_at(stop, self._supernode_down, sn)
        for user in self.users:
            first = self._first_online(rng)
            for start, stop in churn.user_sessions(first, end, rng):
                loop.call_at(start, self._user_online, user)
                if stop < end:
                    loop.call_at(stop, self._user_offline, user)
        if churn.mass_failure is not None:
            at, share = churn.mass_failure
            loop.call_at(at * end, self._mass_failure, share)
        loop.call_at(self.warmup_end, self._open_window)
        lookups = loop.create_task(self._lookups(random.Random(self.rng.getrandbits(64))))
        ticker = loop.create_task(self._progress()) if self.work.progress_s > 0 else None
        await asyncio.sleep(end)
        self._close_window()
        lookups.cancel()
        if ticker is not None:
            ticker.cancel()

    def _first_online(self, rng: random.Random) -> float:
        """When a user first comes online."""
        return rng.uniform(0, self.work.join_window_s)

    # -- supernodes -----------------------------------------------------------------------

    def _spawn(self, sn: Supernode, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.net.spawn(sn.host, coro)
        sn.tasks.add(task)
        task.add_done_callback(sn.tasks.discard)
        return task

    def _supernode_up(self, sn: Supernode) -> None:
        if sn.retired:
            return
        self.net.recover(sn.host)
        dht = DHTNode(sn.identity, self.work.config)
        dht.storage.clock = self._wall  # bound at import time: see tools/sim/clock.py
        dht.storage.rng = random.Random(self.rng.getrandbits(64))
        sn.dht, sn.traces = dht, {}
        if self.window_counts:
            sn.up_since = self.net.loop.time()
        self._spawn(sn, self._join(sn, dht))

    async def _join(self, sn: Supernode, dht: DHTNode) -> None:
        await dht.start(sn.host.ip, DHT_PORT)
        trace_find_value(dht, sn.traces)
        boot = [(n.host.ip, DHT_PORT) for n in self.nodes[:BOOTSTRAP_NODES] if n is not sn]
        if boot:
            await dht.bootstrap(boot)
        sn.joined = True
        self.live.append(sn)

    def _supernode_down(self, sn: Supernode) -> None:
        if not sn.host.up:
            return
        if sn.joined:
            self.live.remove(sn)
        sn.joined = False
        self.net.fail(sn.host)
        if sn.dht is not None:
            sn.dht.stop()
        for task in list(sn.tasks):
            task.cancel()
        if sn.up_since is not None:
            sn.window_up_s += self.net.loop.time() - sn.up_since
            sn.up_since = None
        for user in list(sn.users):
            self._detach(user)
            self.net.loop.call_later(self.work.rehome_s, self._attach, user)

    def _mass_failure(self, share: float) -> None:
        victims = [sn for sn in self.live if sn.index >= BOOTSTRAP_NODES]
        count = round(share * len(victims))
        for sn in self.churn_rng.sample(victims, count):
            self._supernode_down(sn)
            sn.retired = True
        self.mass_failed = count

    # -- users ----------------------------------------------------------------------------

    def _user_online(self, user: User) -> None:
        user.online = True
        self.online.add(user)
        self._attach(user)

    def _user_offline(self, user: User) -> None:
        user.online = False
        self.online.remove(user)
        self._detach(user)

    def _attach(self, user: User) -> None:
        if not user.online or user.supernode is not None:
            return
        if not self.live:
            self.net.loop.call_later(ATTACH_RETRY_S, self._attach, user)
            return
        sn = self.live[self.churn_rng.randrange(len(self.live))]
        user.supernode = sn
        sn.users.add(user)
        user.task = self._spawn(sn, self._presence(sn, user))

    def _detach(self, user: User) -> None:
        if user.supernode is not None:
            user.supernode.users.discard(user)
            user.supernode = None
        if user.task is not None:
            user.task.cancel()
            user.task = None

    async def _presence(self, sn: Supernode, user: User) -> None:
        assert sn.dht is not None
        dht = sn.dht
        while True:
            user.seq += 1
            signed = records.presence(
                user.identity, user.name, "phone", seq=user.seq,
                supernode_key=sn.identity.public_key, supernode_host=sn.host.ip,
                supernode_port=DHT_PORT, lifetime_s=3 * self.work.presence_refresh_s,
            )
            try:
                await dht.put(signed)
            except Exception:
                self.publish_failures += 1
            await asyncio.sleep(self.work.presence_refresh_s)

    # -- lookups --------------------------------------------------------------------------

    async def _lookups(self, rng: random.Random) -> None:
        per_user = self.work.lookups_per_user_h / 3600.0
        if per_user <= 0:
            return
        await asyncio.sleep(self.warmup_end)
        while True:
            online = len(self.online)
            await asyncio.sleep(rng.expovariate(per_user * max(online, 1)))
            if len(self.online) < 2:
                continue
            asker, other = self.online.draw(rng), self.online.draw(rng)
            sn = asker.supernode
            if other is asker or sn is None or not sn.joined or other.seq == 0:
                continue  # (a target whose first record is not out yet is not looked up)
            self._spawn(sn, self._lookup(sn, other))

    async def _lookup(self, sn: Supernode, other: User) -> None:
        assert sn.dht is not None
        loop = self.net.loop
        key = other.key
        trace = HopTrace(local_hit=bool(sn.dht.storage.values(key)))
        sn.traces[key] = trace
        started = loop.time()
        try:
            found = await sn.dht.get(key)
        except Exception:
            found = []
        finally:
            sn.traces.pop(key, None)
        home = other.supernode
        ok = home is not None and any(
            r.record.signer == other.identity.public_key
            and getattr(r.record, "supernode_host", None) == home.host.ip
            for r in found
        )
        self.lookups.append(Lookup(started, loop.time() - started, ok,
                                   trace.best if ok else None))

    # -- measurement ----------------------------------------------------------------------

    def _open_window(self) -> None:
        now = self.net.loop.time()
        for sn in self.nodes:
            self.window_counts[sn.index] = (sn.host.sent_datagrams, sn.host.sent_bytes)
            if sn.host.up:
                sn.up_since = now

    def _close_window(self) -> None:
        now = self.net.loop.time()
        for sn in self.nodes:
            if sn.up_since is not None:
                sn.window_up_s += now - sn.up_since
                sn.up_since = None

    async def _progress(self) -> None:
        started = time.perf_counter()
        while True:
            await asyncio.sleep(self.work.progress_s)
            ok = sum(1 for lk in self.lookups if lk.ok)
            print(f"sim: t={self.net.loop.time():.0f} s wall={time.perf_counter() - started:.0f}"
                  f" s live={len(self.live)} online={len(self.online)} "
                  f"lookups={len(self.lookups)} ok={ok}", file=sys.stderr, flush=True)

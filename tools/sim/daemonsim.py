"""The real daemons in the simulated world: ``overlay.node.supernode.Supernode`` (DHT, TCP
service, admission, directory record and dial-back checks, Vivaldi) on every supernode host and
``overlay.client.daemon.ClientDaemon`` (discovery, the attach policy, presence, backup link,
failover, lookups through the supernode) on every user host. ``--users-as daemons``.

Same timeline and churn as :mod:`tools.sim.dhtsim` (whose :class:`DhtSim` this extends), with:

* users come online in [join window, 2 x join window] (once supernodes exist) and attach on
  their own; ``attach_s`` is the time from a client's start to its first attachment;
* a supernode failing is a crash (host gone, no ``Moving`` to its clients); each client it
  served is then watched until it is attached to another supernode: ``relist_s`` (0.1 s
  resolution). Its clients fail over by themselves (heartbeat loss, backup link);
* lookups are ``ClientDaemon.lookup`` (the request goes over the attach session to the
  supernode, which looks the user up in the DHT) of a user attached at the time; success: a
  record of the target naming the supernode it is attached to now. Hops are traced on the
  asker's supernode's DHT;
* a user going offline stops its client (``ClientDaemon.stop``: it detaches politely).

Clients run with ``may_become_supernode=False`` and ``port_mapping=False`` (no promotion, no
router to talk to), no state dir and no control socket.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from overlay.client.daemon import ClientDaemon
from overlay.client.options import ClientOptions
from overlay.node.daemon import NodeOptions
from overlay.node.supernode import Supernode as SupernodeDaemon
from tools.sim.dhtsim import (
    BOOTSTRAP_NODES,
    DHT_PORT,
    DhtSim,
    DhtWorkload,
    HopTrace,
    Lookup,
    Supernode,
    User,
    trace_find_value,
)
from tools.sim.net import SimNet

#: how often a client whose supernode failed is checked for a new attachment
RELIST_POLL_S = 0.1


class DaemonSim(DhtSim):
    def __init__(self, net: SimNet, work: DhtWorkload) -> None:
        super().__init__(net, work)
        self.warmup_end = min(2 * work.join_window_s + 120.0, work.duration_s / 2)
        self.attach_s: list[float] = []
        self.relist_s: list[float] = []
        self.by_key: dict[bytes, Supernode] = {}

    def build(self) -> None:
        super().build()
        for sn in self.nodes:
            self.by_key[sn.identity.public_key] = sn
        for user in self.users:
            user.host = self.net.add_host()

    def _first_online(self, rng: random.Random) -> float:
        return rng.uniform(self.work.join_window_s, 2 * self.work.join_window_s)

    # -- supernodes -----------------------------------------------------------------------

    def _supernode_up(self, sn: Supernode) -> None:
        if sn.retired:
            return
        self.net.recover(sn.host)
        boot = [(n.host.ip, DHT_PORT) for n in self.nodes[:BOOTSTRAP_NODES] if n is not sn]
        opts = NodeOptions(listen=(sn.host.ip, DHT_PORT), bootstrap=boot, dht=self.work.config)
        daemon = SupernodeDaemon(opts, identity=sn.identity)
        daemon.dht.storage.clock = self._wall  # bound at import time: see tools/sim/clock.py
        daemon.dht.storage.rng = random.Random(self.rng.getrandbits(64))
        sn.daemon, sn.dht, sn.traces = daemon, daemon.dht, {}
        if self.window_counts:
            sn.up_since = self.net.loop.time()
        self._spawn(sn, self._start(sn, daemon))

    async def _start(self, sn: Supernode, daemon: SupernodeDaemon) -> None:
        await daemon.start()
        trace_find_value(daemon.dht, sn.traces)
        sn.joined = True
        self.live.append(sn)

    def _supernode_down(self, sn: Supernode) -> None:
        if not sn.host.up:
            return
        daemon = sn.daemon
        served = [u for u in self.users if u.online and _attached_to(u) == sn.identity.public_key]
        super()._supernode_down(sn)  # the host is gone: sockets closed, streams reset
        if daemon is not None:
            _crash(daemon)
        failed_at = self.net.loop.time()
        for user in served:
            assert user.host is not None
            self.net.spawn(user.host, self._watch_relist(user, sn.identity.public_key,
                                                         failed_at))

    async def _watch_relist(self, user: User, gone: bytes, since: float) -> None:
        loop = self.net.loop
        while user.online:
            key = _attached_to(user)
            if key is not None and key != gone:
                self.relist_s.append(loop.time() - since)
                return
            await asyncio.sleep(RELIST_POLL_S)

    # -- users ----------------------------------------------------------------------------

    def _user_online(self, user: User) -> None:
        assert user.host is not None
        user.online = True
        self.online.add(user)
        self.net.recover(user.host)
        boot = [(n.host.ip, DHT_PORT) for n in self.nodes[:BOOTSTRAP_NODES]]
        opts = ClientOptions(user=user.name, key_path=Path("/nonexistent/sim"), bootstrap=boot,
                             device="phone", may_become_supernode=False, port_mapping=False,
                             presence_refresh_s=self.work.presence_refresh_s)
        client = ClientDaemon(opts, identity=user.identity)
        user.client = client
        user.task = self.net.spawn(user.host, self._run_client(client))

    async def _run_client(self, client: ClientDaemon) -> None:
        loop = self.net.loop
        started = loop.time()
        await client.start()
        await client.attached.wait()
        self.attach_s.append(loop.time() - started)

    def _user_offline(self, user: User) -> None:
        assert user.host is not None
        user.online = False
        self.online.remove(user)
        if user.task is not None:
            user.task.cancel()
        client, user.client = user.client, None
        if client is not None:
            self.net.spawn(user.host, _stop_then_fail(client, self.net, user))

    # -- lookups --------------------------------------------------------------------------

    async def _lookups(self, rng: random.Random) -> None:
        per_user = self.work.lookups_per_user_h / 3600.0
        if per_user <= 0:
            return
        await asyncio.sleep(self.warmup_end)
        while True:
            await asyncio.sleep(rng.expovariate(per_user * max(len(self.online), 1)))
            if len(self.online) < 2:
                continue
            asker, other = self.online.draw(rng), self.online.draw(rng)
            home = self.by_key.get(_attached_to(asker) or b"")
            if (other is asker or home is None or not home.joined or asker.host is None
                    or _attached_to(other) is None):
                continue  # (a target not attached yet is not looked up)
            self.net.spawn(asker.host, self._client_lookup(asker, other, home))

    async def _client_lookup(self, asker: User, other: User, home: Supernode) -> None:
        loop = self.net.loop
        key = other.key
        trace = HopTrace(local_hit=bool(home.dht and home.dht.storage.values(key)))
        home.traces[key] = trace
        started = loop.time()
        try:
            found, _ = await asker.client.lookup(other.name)
        except Exception:
            found = []
        finally:
            home.traces.pop(key, None)
        now_at = _attached_to(other)
        ok = now_at is not None and any(
            r.record.signer == other.identity.public_key
            and getattr(r.record, "supernode_key", None) == now_at
            for r in found
        )
        self.lookups.append(Lookup(started, loop.time() - started, ok,
                                   trace.best if ok else None))

    # -- measurement ----------------------------------------------------------------------

    def clients_per_supernode(self) -> list[int]:
        """How many clients each live supernode serves now."""
        return [len(sn.daemon.attached) for sn in self.live if sn.daemon is not None]


def _attached_to(user: User) -> bytes | None:
    """The key of the supernode ``user``'s client is attached to now (None: not attached)."""
    client: Any = user.client
    primary = client.primary if client is not None else None
    if primary is None or primary.ok is None or not primary.alive:
        return None
    key: bytes = primary.candidate.node_key
    return key


def _crash(daemon: SupernodeDaemon) -> None:
    """Stop everything the dead host's daemon would still do (its sockets are gone)."""
    daemon.stopping.set()
    for task in daemon._tasks:
        task.cancel()
    daemon.publisher.stop()
    daemon.signals.stop()
    if daemon.directory_checks is not None:
        daemon.directory_checks.stop()
    daemon.tcp._tasks.cancel_all()
    daemon.dht.stop()


async def _stop_then_fail(client: ClientDaemon, net: SimNet, user: User) -> None:
    try:
        await asyncio.wait_for(client.stop(), 10.0)
    except Exception:
        pass
    if not user.online and user.host is not None:
        net.fail(user.host)

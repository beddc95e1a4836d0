"""Issue acceptance on loopback with real processes: 1 bootstrap node, 5 supernodes and 50
client daemons. Every user is found by ``overlay lookup`` (a separate process) with the
supernode it is really attached to; SIGKILL the supernodes of at least 10 clients and every
one of them re-attaches and is looked up at its new supernode within 10 s."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import defaultdict

from overlay.attach.adapter import ClientSession
from overlay.client.control import ControlSocketError, control_request_async
from overlay.core.identity import Identity
from tests.helpers.daemons import Daemon
from tests.helpers.netutil import wait_for
from tests.helpers.overlay_net import ProcessOverlay

CLIENTS = 50


async def run_lookup(name: str, bootstrap: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "overlay", "lookup", name, "--json", "--bootstrap", bootstrap,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode in (0, 3), err.decode()
    return json.loads(out)


async def test_fifty_clients_five_supernodes_lookup_and_failover(tmp_path):
    net = await ProcessOverlay(tmp_path, 5, ["--heartbeat", "1"]).start()
    clients: list[Daemon] = []
    try:
        for i in range(CLIENTS):
            state = tmp_path / f"u{i}"
            clients.append(Daemon(
                ["client", "--user", f"user{i}", "--device", "laptop", "--state-dir", str(state),
                 "--control", str(tmp_path / f"u{i}.sock"), "--bootstrap", net.bootstrap_addr,
                 "--presence-refresh", "5", "--no-supernode"],
                tmp_path / f"u{i}.log").start())

        async def status(i: int) -> dict:
            try:
                return await control_request_async(tmp_path / f"u{i}.sock", {"cmd": "status"})
            except ControlSocketError:
                return {}  # not listening yet

        async def all_attached() -> bool:
            states = await asyncio.gather(*(status(i) for i in range(CLIENTS)))
            return all(s.get("state") == "attached" for s in states)

        await wait_for(all_attached, timeout=90, interval=0.5)
        attached_to = {}
        for i in range(CLIENTS):
            s = await status(i)
            attached_to[i] = s["supernode"]["address"]
            assert s["backup"] is not None  # a warm backup is kept

        # every user, looked up by a separate `overlay lookup` process, names its supernode
        sem = asyncio.Semaphore(8)

        async def lookup(i: int) -> dict:
            async with sem:
                return await run_lookup(f"user{i}", net.bootstrap_addr)

        found = await asyncio.gather(*(lookup(i) for i in range(CLIENTS)))
        for i, result in enumerate(found):
            assert result["online"], result
            assert result["devices"][0]["supernode"] == attached_to[i], (i, result)

        # SIGKILL supernodes until at least 10 clients have lost theirs (at most two)
        by_supernode = defaultdict(list)
        for i, address in attached_to.items():
            by_supernode[address].append(i)
        victims, orphans = [], []
        for address, users in sorted(by_supernode.items(), key=lambda kv: -len(kv[1])):
            if len(orphans) >= 10 or len(victims) == 2:
                break
            victims.append(address)
            orphans += users
        assert len(orphans) >= 10, dict(by_supernode)
        for address in victims:
            index = [net.supernode_addr(j) for j in range(5)].index(address)
            net.supernodes[index].proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        # the bootstrap node limits each session to 20 requests/s: poll through several
        observers = [await ClientSession.connect(net.ips[0], net.port, Identity.generate(),
                                                 expected_node_key=None, lookup_only=True)
                     for _ in range(4)]

        async def moved(i: int) -> bool:
            records = await observers[i % len(observers)].lookup(f"user{i}")
            newest = max(records, key=lambda s: s.seq) if records else None
            if newest is None or not newest.record.online:
                return False
            address = f"{newest.record.supernode_host}:{newest.record.supernode_port}"
            return address not in victims

        async def all_moved() -> bool:
            return all(await asyncio.gather(*(moved(i) for i in orphans)))

        await wait_for(all_moved, timeout=10, interval=0.5)
        elapsed = time.monotonic() - killed_at
        assert elapsed <= 10
        print(f"\n{len(orphans)} clients of {len(victims)} killed supernodes "
              f"({ {a: len(u) for a, u in by_supernode.items()} }) "
              f"looked up at new supernodes {elapsed:.1f}s after SIGKILL")
        # and the lookup command agrees, naming each client's new supernode
        for i in orphans:
            result = await run_lookup(f"user{i}", net.bootstrap_addr)
            s = await status(i)
            assert s["state"] == "attached" and s["supernode"]["address"] not in victims
            assert result["online"] and result["devices"][0]["supernode"] == \
                s["supernode"]["address"]

        # a frozen supernode (no FIN, no RST: like a machine that vanished) is found dead by
        # heartbeats alone, and its clients move too
        current = {i: (await status(i))["supernode"]["address"] for i in range(CLIENTS)}
        live = [net.supernode_addr(j) for j in range(5) if net.supernode_addr(j) not in victims]
        frozen = max(live, key=lambda a: sum(1 for v in current.values() if v == a))
        orphans = [i for i, a in current.items() if a == frozen]
        victims = [*victims, frozen]
        net.supernodes[[net.supernode_addr(j) for j in range(5)].index(frozen)].proc.send_signal(
            signal.SIGSTOP)
        frozen_at = time.monotonic()
        await wait_for(all_moved, timeout=10, interval=0.5)
        print(f"{len(orphans)} clients of a frozen supernode looked up elsewhere "
              f"{time.monotonic() - frozen_at:.1f}s after SIGSTOP (heartbeat 1 s)")
        for observer in observers:
            observer.close()
    finally:
        for client in clients:
            client.kill()
        net.stop()

"""The sharded supernode directory (issue 14), with real ``overlay`` processes: more supernodes
than one directory key can hold under a lowered per-key cap, every one of them discoverable
and chosen by the clients near it.

A bootstrap node and 6 supernodes, each on its own loopback /24, all run with
``--directory-key-cap 1``: a holder lists at most 1 supernode under one directory key (the
single-key directory before the shards would have shown 1 of the 6); each supernode's shard
key is at that cap. Each supernode advertises a latency
proxy (:mod:`tests.helpers.latency_proxy`) that puts the processes on a line: client ``i``
lives at supernode ``i`` (no added delay), the other supernodes are 250 ms + 50 ms per step
away (far enough that a loaded machine's scheduling noise does not reorder them). What
must hold:

* no node holds more than the cap listed and the cap waiting under any directory key
  (``overlay_directory_max_records_per_key`` <= 2 x cap), while the bootstrap node lists all
  6 supernodes (``overlay_directory_records{state="listed"}``);
* the directory a client fetches from the bootstrap node names every supernode;
* every client attaches to the supernode at its place: each supernode is chosen by the client
  near it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from overlay.attach.adapter import ClientSession, SessionError
from overlay.core import records
from overlay.core.directory_keys import shard_of
from overlay.core.identity import Identity
from tests.helpers.daemons import Daemon, scrape_metrics, wait_ready
from tests.helpers.latency_proxy import LatencyProxy
from tests.helpers.netutil import loopback_ips, wait_for
from tests.helpers.node_keys import SEEDS

CAP = 1
#: pooled keys (their ids solve the production puzzle)
SUPERNODE_SEEDS = (0, 1, 2, 3, 5, 6)
BOOT_SEED = 4
PORT, PROXY_PORT = 4000, 4100
NEAR_S, STEP_S = 0.25, 0.05


def pooled(i: int) -> Identity:
    return Identity.from_seed(bytes.fromhex(SEEDS[i]))


async def directory_keys(host: str) -> set[bytes]:
    """The supernodes a client is told of by the bootstrap node's ``DirectoryRequest``."""
    try:
        session = await ClientSession.connect(host, PORT, Identity.generate(),
                                              expected_node_key=None, lookup_only=True)
    except SessionError:
        return set()
    try:
        return {s.record.node_key for s in await session.directory()
                if isinstance(s.record, records.SupernodeRecord)}
    except SessionError:
        return set()
    finally:
        session.close()


async def test_more_supernodes_than_a_key_holds_are_all_discovered_and_chosen_nearby(
    tmp_path: Path,
) -> None:
    ips = loopback_ips(4 * len(SUPERNODE_SEEDS))
    boot_ip, sn_ips = ips[0], []
    for ip in ips[1:]:  # supernodes on /24s of distinct shards: each key at the cap of 1
        if shard_of(ip) not in {shard_of(other) for other in sn_ips}:
            sn_ips.append(ip)
    sn_ips = sn_ips[:len(SUPERNODE_SEEDS)]
    boot_addr = f"{boot_ip}:{PORT}"
    identities = [pooled(i) for i in SUPERNODE_SEEDS]
    shards = [shard_of(ip) for ip in sn_ips]
    assert len(set(shards)) == len(identities)
    cap_args = ["--directory-key-cap", str(CAP)]
    started: list[Daemon] = []
    proxies: list[LatencyProxy] = []
    #: client pid -> its place (the index of the supernode it lives at)
    place_of: dict[int, int] = {}

    def rtt_to(place: int) -> Callable[[int | None], float]:
        def rtt(pid: int | None) -> float:
            if pid is None or pid not in place_of:
                return 0.0  # the nodes' own traffic (dial-backs): no added delay
            here = place_of[pid]
            return 0.0 if here == place else NEAR_S + STEP_S * abs(here - place)
        return rtt

    def run(name: str, args: list[str], http: str | None = None) -> Daemon:
        daemon = Daemon(args, tmp_path / f"{name}.log", http=http).start()
        started.append(daemon)
        return daemon

    def key_file(name: str, identity: Identity) -> list[str]:
        path = tmp_path / f"{name}.node.key"
        identity.save(path)
        return ["--key", str(path)]

    try:
        boot = run("boot", ["bootstrap", "--listen", boot_addr, "--http", f"{boot_ip}:8080",
                            *key_file("boot", pooled(BOOT_SEED)), *cap_args],
                   http=f"{boot_ip}:8080")
        await wait_ready(f"{boot_ip}:8080", boot)
        supernodes = []
        for i, (ip, identity) in enumerate(zip(sn_ips, identities, strict=True)):
            proxies.append(await LatencyProxy((ip, PROXY_PORT), (ip, PORT),
                                              place_of.keys, rtt_to(i)).start())
            supernodes.append(run(f"sn{i}", [
                "supernode", "--listen", f"{ip}:{PORT}", "--advertise", f"{ip}:{PROXY_PORT}",
                "--bootstrap", boot_addr, "--http", f"{ip}:8080",
                *key_file(f"sn{i}", identity), *cap_args], http=f"{ip}:8080"))
        for ip, daemon in zip(sn_ips, supernodes, strict=True):
            await wait_ready(f"{ip}:8080", daemon)
        everyone = {ident.public_key for ident in identities}

        # every supernode discoverable: the bootstrap node's directory names all 6
        async def all_discoverable() -> bool:
            return await directory_keys(boot_ip) == everyone

        await wait_for(all_discoverable, timeout=30, interval=0.3)

        # ... while no key holds more than the cap listed plus the cap waiting, anywhere
        for daemon in [boot, *supernodes]:
            metrics = await scrape_metrics(daemon)
            assert metrics["overlay_directory_max_records_per_key"] <= 2 * CAP, daemon.name
        boot_metrics = await scrape_metrics(boot)
        assert boot_metrics['overlay_directory_records{state="listed"}'] == len(everyone)
        assert boot_metrics["overlay_directory_keys"] == len(set(shards))

        # each client, at supernode i's place, attaches to supernode i
        clients = []
        for i in range(len(identities)):
            client = run(f"client{i}", [
                "client", "--user", f"user{i}", "--device", "laptop",
                "--key", str(tmp_path / f"user{i}.key"), "--state-dir", str(tmp_path / f"u{i}"),
                "--bootstrap", boot_addr, "--no-supernode", "--no-port-mapping"])
            assert client.proc is not None
            place_of[client.proc.pid] = i
            clients.append(client)

        def attached_to(client: Daemon) -> str | None:
            events = client.events("attached")
            return events[-1]["node_key"] if events else None

        await wait_for(lambda: all(attached_to(c) for c in clients), timeout=30, interval=0.3)
        chosen = [attached_to(c) for c in clients]
        assert chosen == [ident.public_key.hex() for ident in identities], (
            "clients did not attach to the supernode at their place")
        # the proxies really put distance between them: every client met the far ones
        far = {pid for proxy in proxies for pid, rtt in proxy.seen if rtt >= NEAR_S}
        assert far == set(place_of)
    finally:
        for daemon in started:
            daemon.kill()
        for proxy in proxies:
            await proxy.stop()

"""``overlay demo``: a whole overlay on loopback, no configuration.

A bootstrap node, three supernodes and four client daemons start in this process, each on its
own 127.x address as separate machines would be. The clients discover the supernodes through
the bootstrap node, measure their round-trip times and attach to the nearest; a lookup (over
TCP, every signature verified by the reader) shows where each user is reached; alice sends bob
a file: her invite is a contact request until bob accepts it, then the file goes (signalled
through supernodes, end-to-end encrypted, the path it took shown); one client
leaves cleanly and is shown offline; a supernode stops and its clients move. Ctrl-C at any
point stops everything (all of it lives in this one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from overlay.attach import SessionConfig
from overlay.attach.adapter import ClientSession, SessionError
from overlay.cli.common import EXIT_INTERRUPTED
from overlay.cli.lookup import lookup_json
from overlay.client.daemon import ClientDaemon
from overlay.client.lookup import lookup_via
from overlay.client.options import ClientOptions
from overlay.core import logs, records
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.user_ref import UserRef
from overlay.dht import DHTConfig, DirectoryLimits, StorageLimits
from overlay.node.daemon import NodeDaemon, NodeOptions
from overlay.node.supernode import Supernode, SupernodeOptions
from overlay.node.tcp_service import ServiceLimits

USERS = (("alice", "laptop"), ("bob", "phone"), ("carol", "desktop"), ("dave", "tablet"))
log = get_logger(__name__)


async def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.05)


def _attachments(clients: list[ClientDaemon], names: dict[str, str]) -> Table:
    table = Table(title="attachments (nearest supernode by measured RTT, plus a warm backup)")
    for column in ("user", "device", "attached to", "rtt", "backup", "seen as"):
        table.add_column(column)
    for client in clients:
        s = client.status()
        sn, backup = s["supernode"], s["backup"]
        table.add_row(
            s["user"], s["device"],
            names.get(sn["address"], sn["address"]) if isinstance(sn, dict) else "-",
            f"{sn['rtt_ms']:.2f} ms" if isinstance(sn, dict) and sn.get("rtt_ms") else "-",
            names.get(backup["address"], backup["address"]) if isinstance(backup, dict) else "-",
            str(s["reflexive"]["address"]) if isinstance(s.get("reflexive"), dict) else "-",
        )
    return table


async def _lookups(boot: tuple[str, int], names: dict[str, str], title: str) -> Table:
    table = Table(title=title)
    for column in ("user", "status", "device", "reached through", "public key"):
        table.add_column(column)
    for user in (*(u for u, _ in USERS), "mallory"):
        found, _ = await lookup_via([boot], user, timeout=5)
        result = lookup_json(UserRef(user), found)
        if not result["devices"]:
            table.add_row(user, "[red]unknown[/]", "-", "-", "-")
        for d in result["devices"]:
            table.add_row(
                user, "[green]online[/]" if d["online"] else "[yellow]offline[/]", d["device"],
                names.get(d["supernode"], d["supernode"]) if d["supernode"] else "-",
                str(result["public_key"])[:16] + "…",
            )
    return table


async def _send_after_consent(console: Console, sender: ClientDaemon, receiver: ClientDaemon,
                              payload: Path) -> dict[str, Any]:
    """The sender is not a contact of the receiver: its invite becomes a contact request
    (answered "pending", no address revealed) until the receiver accepts it."""
    to, who = receiver.opts.user, sender.opts.user
    sending = asyncio.create_task(sender.media.send(to, payload))
    try:
        await _wait(lambda: receiver.contacts.requests.pending(time.time()) or sending.done(),
                    20, f"{who}'s contact request reaching {to}")
        if sending.done():
            return await sending  # its error, if the request never got there
        (request,) = receiver.contacts.requests.pending(time.time())
        console.print(f"[bold]{to}[/] has a contact request from [bold]{who}[/] (key "
                      f"{request.key.hex()[:16]}…): no answer, no address of {to}'s revealed; "
                      f"{who}'s send waits")
        receiver.accept_request(who)
        console.print(f"[bold]{to}[/] accepts: {who} is now a contact (key pinned), "
                      "and the waiting invite is answered")
        return await sending
    finally:
        sending.cancel()


async def run_demo(console: Console, workdir: Path) -> int:
    base = f"127.{100 + secrets.randbelow(100)}.{secrets.randbelow(256)}"
    dht = DHTConfig(refresh_interval_s=3600)
    limits = ServiceLimits(session=SessionConfig(heartbeat_interval_s=1.0))
    # every supernode shares one /24 here: list them all (the default is 4 per /24)
    storage = StorageLimits(directory=DirectoryLimits(listed_per_network=64))
    boot_addr = (f"{base}.1", 4000)
    nodes: list[NodeDaemon] = []
    clients: list[ClientDaemon] = []
    names: dict[str, str] = {}
    try:
        boot = NodeDaemon(NodeOptions(listen=boot_addr, dht=dht, limits=limits,
                                      storage=storage),
                          Identity.generate())
        await boot.start()
        nodes.append(boot)
        names[f"{boot_addr[0]}:{boot_addr[1]}"] = "bootstrap"
        console.print(f"[bold]bootstrap node[/] on {boot_addr[0]}:{boot_addr[1]} (UDP DHT, TCP)")
        for i in range(3):
            addr = (f"{base}.{10 + i}", 4000)
            sn = Supernode(NodeOptions(listen=addr, bootstrap=[boot_addr], dht=dht, limits=limits,
                                       storage=storage),
                           SupernodeOptions(max_clients=100, record_refresh_s=2.0),
                           Identity.generate())
            await sn.start()
            nodes.append(sn)
            names[f"{addr[0]}:{addr[1]}"] = f"supernode-{i + 1}"
            console.print(f"[bold]supernode-{i + 1}[/] on {addr[0]}:{addr[1]}, joined with "
                          f"{sn.dht.routing_table_size} contacts, record published")

        for user, device in USERS:
            client = ClientDaemon(ClientOptions(
                user=user, device=device, key_path=workdir / f"{user}.key",
                bootstrap=[boot_addr], state_dir=workdir / user, heartbeat_s=1.0,
                presence_refresh_s=10.0, may_become_supernode=False,
            ))
            await client.start()
            clients.append(client)
        await _wait(lambda: all(c.status()["state"] == "attached" for c in clients), 20,
                    "every client attaching")
        console.print(_attachments(clients, names))
        console.print(await _lookups(boot_addr, names,
                                     "lookup over TCP; every signature verified by the reader"))

        payload = workdir / "holiday-photos.tar"
        payload.write_bytes(os.urandom(2 * 2**20))
        sent = await _send_after_consent(console, clients[0], clients[1], payload)
        received = workdir / "bob" / "inbox" / payload.name
        same = hashlib.sha256(received.read_bytes()).hexdigest() == sent["sha256"]
        console.print(
            f"[bold]alice → bob[/]: {payload.name}, {sent['bytes']} bytes in "
            f"{sent['seconds'] * 1000:.0f} ms via [bold]{sent['path']}[/] (signalled through "
            f"their supernodes, end-to-end encrypted); sha256 "
            f"{'[green]matches[/]' if same else '[red]DIFFERS[/]'} in bob's inbox")
        if not same:
            return 1

        leaving = clients.pop(2)
        await leaving.stop()
        console.print(f"[bold]{leaving.opts.user}[/] quit cleanly: "
                      "its supernode published a signed offline record")

        victim = next(n for n in nodes[1:] if isinstance(n, Supernode) and n.attached)
        moved = [c for c in clients if c.status()["supernode"]
                 and c.status()["supernode"]["address"] == "{}:{}".format(*victim.advertised)]
        victim_name = names["{}:{}".format(*victim.advertised)]
        await victim.stop()
        nodes.remove(victim)
        console.print(f"[bold]{victim_name}[/] stopped and told its "
                      f"{len(moved)} client(s) to move")
        await _wait(lambda: all(
            c.status()["state"] == "attached"
            and c.status()["supernode"]["address"] != "{}:{}".format(*victim.advertised)
            for c in clients), 20, "clients moving")
        await asyncio.sleep(0.2)
        console.print(_attachments(clients, names))
        console.print(await _lookups(boot_addr, names, "lookup after the changes"))

        mallory = Identity.generate()
        target = next(n for n in nodes if isinstance(n, Supernode))
        host, port = target.advertised
        try:
            session = await ClientSession.connect(host, port, mallory,
                                                  expected_node_key=target.identity.public_key,
                                                  user="alice", device="laptop")
            await session.attach(records.presence(
                mallory, "alice", "laptop", seq=10**15, supernode_key=target.identity.public_key,
                supernode_host=host, supernode_port=port))
            console.print("[red]mallory took over alice's name[/]")
            return 1
        except SessionError as exc:
            console.print(f"mallory signing in as alice with another key: [bold]{exc}[/]")
        return 0
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.stop()
        for node in reversed(nodes):
            with contextlib.suppress(Exception):
                await node.stop()
        console.print("stopped every node and client")


def main() -> int:
    console = Console()
    logs.configure("error", json=False)
    with tempfile.TemporaryDirectory(prefix="overlay-demo-") as tmp:
        try:
            import uvloop

            return uvloop.run(run_demo(console, Path(tmp)))
        except KeyboardInterrupt:
            console.print("interrupted; everything was stopped")
            return EXIT_INTERRUPTED

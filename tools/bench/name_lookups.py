"""Requests per user lookup: what a name lookup (``DHTNode.get_answers``, the holders'
majority) and a plain value lookup (``DHTNode.get``, e.g. the supernode directory) cost in
DHT requests on an in-process network (JSON on stdout).

``python -m tools.bench.name_lookups [--nodes 200] [--names 30] [--out FILE]``

Each of ``--names`` users publishes a name claim from a random node; then each name is looked
up once from another random node, by ``get_answers`` (name lookup: disjoint paths,
``DHTConfig.name_lookup_paths``) and by ``get`` (one path), and once more by ``get_answers``
for a name nobody holds. Requests are the sum of every node's ``requests_out`` during the
lookup, by method (``find_value``; ``cookie_retry``: a first request to a node from an
address it has not proven; ``ping``: the verification pings the asked nodes send back),
wall time per lookup too. The network is built as
the unit tests build theirs (:class:`tests.helpers.netutil.Network`: one /24 per node, the
test networks' id puzzle).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht import DHTConfig, DHTNode
from tests.helpers.netutil import Network
from tools.bench.common import emit_json, git


def requests_out(net: Network) -> Counter[str]:
    total: Counter[str] = Counter()
    for n in [net.bootstrap, *net.nodes]:
        total.update(n.stats.requests_out)
    return total


Sample = tuple[Counter[str], float]


async def measure(net: Network, lookup: Awaitable[Any]) -> Sample:
    """Requests by method and milliseconds of ``lookup`` (a coroutine not started yet)."""
    before = requests_out(net)
    start = time.perf_counter()
    await lookup
    return requests_out(net) - before, (time.perf_counter() - start) * 1000


def summary(samples: list[Sample]) -> dict[str, Any]:
    reqs = [r.total() for r, _ in samples]
    ms = [t for _, t in samples]
    methods = sorted({m for r, _ in samples for m in r})
    return {"lookups": len(samples), "requests_mean": round(statistics.fmean(reqs), 1),
            "requests_median": statistics.median(reqs), "requests_max": max(reqs),
            "by_method_mean": {m: round(statistics.fmean(r[m] for r, _ in samples), 1)
                               for m in methods},
            "ms_median": round(statistics.median(ms), 2)}


async def run(nodes: int, names: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    net = await Network(nodes, DHTConfig(refresh_interval_s=3600)).start()
    try:
        users = [(f"user{i}", Identity.generate()) for i in range(names)]
        for name, key in users:
            await rng.choice(net.nodes).put(records.name_claim(key, name, seq=1))
        await asyncio.sleep(0.5)  # stragglers of the puts
        by_name, by_get, unknown = [], [], []
        for name, _ in users:
            reader: DHTNode = rng.choice(net.nodes)
            dht_key = records.user_key(name)
            by_name.append(await measure(net, reader.get_answers(dht_key)))
            by_get.append(await measure(net, reader.get(dht_key)))
            unknown.append(await measure(
                net, reader.get_answers(records.user_key(f"nobody-{rng.random()}"))))
        return {
            "benchmark": "tools.bench.name_lookups",
            "git_head": git("rev-parse", "HEAD"),
            "nodes": nodes,
            "name_lookup_paths": getattr(net.config, "name_lookup_paths", 1),
            "name_lookup": summary(by_name),
            "value_lookup": summary(by_get),
            "unknown_name_lookup": summary(unknown),
        }
    finally:
        net.stop()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.name_lookups", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--names", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out")
    args = p.parse_args()
    emit_json(asyncio.run(run(args.nodes, args.names, args.seed)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The DHT id puzzle's cost: key generations per second, seconds per valid node id at the
network's difficulty, the cost of checking one, and what placing ids next to a key costs an
attacker (JSON on stdout).

``python -m tools.bench.puzzle [--bits N] [--ids 8] [--rate-s 3] [--network 10000] [--out FILE]``

The rule (:func:`overlay.core.identity.id_puzzle_ok`): a public node's id is valid when
SHA-256(id) starts with ``bits`` zero bits (``DHTConfig.id_puzzle_bits``, default 16). One
try is one key generation (seed -> ed25519 public key -> id = SHA-256(key)[:20] -> SHA-256 of
the id), what :meth:`overlay.core.identity.Identity.generate_node` loops over.

The attacker model: a network of ``--network`` honest nodes with uniformly spread ids, k = 20.
To put ``m`` of its ids among the k closest nodes to a chosen key, each of them must be closer
to the key than the (k - m + 1)-th closest honest node, a region holding a fraction
(k - m + 1) / N of the id space, so it grinds m * N / (k - m + 1) valid ids on average, each
costing 2^bits tries. ``m = 11`` is a majority of a name's holders; ``m = 20`` eclipses the key.
Routing-table diversity adds a network cost the puzzle does not: tables take at most 2
contacts of one /24 per bucket and lookups at most 10 per /24, so ``m`` ids need
ceil(m / 2) distinct /24s to sit in honest tables around the key.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys
import time
from typing import Any

from nacl.bindings import crypto_sign_seed_keypair

from overlay.core.identity import Identity, id_puzzle_ok, node_id_for
from overlay.dht import DHTConfig
from tools.bench.common import cpu_affinity, dist_version, emit_json, git

K = 20


def tries_per_second(seconds: float) -> float:
    """Key generations (with the id and its puzzle hash) per second on one core."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            public_key, _ = crypto_sign_seed_keypair(os.urandom(32))
            id_puzzle_ok(hashlib.sha256(public_key).digest()[:20], 1)
        n += 1000
    return n / (time.perf_counter() - start)


def seconds_per_id(bits: int, ids: int) -> list[float]:
    times = []
    for _ in range(ids):
        start = time.perf_counter()
        Identity.generate_node(bits)
        times.append(time.perf_counter() - start)
    return times


def verify_us(bits: int, repeat: int = 200_000) -> dict[str, float]:
    """Checking an id (one SHA-256), and a sender key (its id first: two)."""
    key = Identity.generate().public_key
    node_id = node_id_for(key)
    start = time.perf_counter()
    for _ in range(repeat):
        id_puzzle_ok(node_id, bits)
    by_id = (time.perf_counter() - start) / repeat * 1e6
    start = time.perf_counter()
    for _ in range(repeat):
        id_puzzle_ok(node_id_for(key), bits)
    by_key = (time.perf_counter() - start) / repeat * 1e6
    return {"id_us": round(by_id, 3), "sender_key_us": round(by_key, 3)}


def placement(network: int, bits: int, rate: float, m: int) -> dict[str, Any]:
    ids = m * network / (K - m + 1)
    tries = ids * 2 ** bits
    return {
        "ids_among_k_closest": m,
        "valid_ids_to_grind": round(ids),
        "key_generations": round(tries),
        "core_hours": round(tries / rate / 3600, 2),
        "core_s_without_puzzle": round(ids / rate, 2),
        "distinct_slash24s_needed": math.ceil(m / 2),
    }


def run(bits: int, ids: int, rate_s: float, network: int) -> dict[str, Any]:
    rate = tries_per_second(rate_s)
    times = seconds_per_id(bits, ids)
    return {
        "benchmark": "tools.bench.puzzle",
        "env": {
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "cpu_affinity": cpu_affinity(), "pynacl": dist_version("pynacl"),
            "loadavg_1m": round(os.getloadavg()[0], 2), "git_head": git("rev-parse", "HEAD"),
        },
        "bits": bits,
        "default_bits": DHTConfig().id_puzzle_bits,
        "key_generations_per_s": round(rate),
        "expected_s_per_id": round(2 ** bits / rate, 3),
        "measured_s_per_id": {
            "ids": ids, "mean": round(statistics.fmean(times), 3),
            "median": round(statistics.median(times), 3), "max": round(max(times), 3),
        },
        "verify": verify_us(bits),
        "attack": {
            "network_nodes": network, "k": K,
            "majority": placement(network, bits, rate, K // 2 + 1),
            "eclipse": placement(network, bits, rate, K),
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.puzzle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=DHTConfig().id_puzzle_bits)
    p.add_argument("--ids", type=int, default=8, help="valid ids to generate and time")
    p.add_argument("--rate-s", type=float, default=3.0, help="seconds to measure tries/s")
    p.add_argument("--network", type=int, default=10_000, help="honest nodes (attack model)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    emit_json(run(args.bits, args.ids, args.rate_s, args.network), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

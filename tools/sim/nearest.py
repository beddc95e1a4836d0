"""How near and how spread clients attach (issue 14's directory requirements), from a
``--users-as daemons`` run: for every attached client, the rank of its supernode by the world
model's RTT among the live supernodes (0: the nearest), and clients per supernode.

    python -m tools.sim.nearest SUPERNODES USERS HOURS SEED OUT.json

Writes the simulator's document (:mod:`tools.sim.run`) plus a ``nearest`` object
(``share_top10``: clients attached within their 10 % nearest supernodes; ``rank_p50``,
``rank_p90``; ``clients_max``, ``clients_mean``; ``late_moves``, ``late_refines``: the late
refine's, summed over clients; ``outside``: per client outside its 10 % nearest, its RTT, the
best one, how many of its 10 % nearest it measured, its late refines and moves) and prints
that object. Churn ``none``, join
window 60 s, 6 lookups per user-hour.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import tools.sim.run as run
from tools.sim.daemonsim import DaemonSim, _attached_to

nearest: dict[str, Any] = {}
_measure = run.measure


def measure(sim: Any, params: run.Params, config: Any) -> dict[str, Any]:
    values = _measure(sim, params, config)
    assert isinstance(sim, DaemonSim)
    live = [sn for sn in sim.live if sn.host.up]
    ranks: list[float] = []
    for user in sim.users:
        key = _attached_to(user) if user.online else None
        if key is None or user.host is None:
            continue
        rtts = [(2 * sim.net.one_way_s(user.host, sn.host), sn.identity.public_key)
                for sn in live]
        mine = next(r for r, k in rtts if k == key)
        ranks.append(sum(1 for r, _ in rtts if r < mine) / len(rtts))
    ranks.sort()
    late_moves = late_refines = 0
    outside: list[dict[str, Any]] = []  # clients outside their 10 %: why the refine did not act
    for user in sim.users:
        client: Any = user.client
        if client is None:
            continue
        late_moves += client.supervisor.late_moves
        late_refines += client.supervisor.late_refines
        key = _attached_to(user) if user.online else None
        if key is None or user.host is None:
            continue
        rtts = sorted((2 * sim.net.one_way_s(user.host, sn.host), sn.identity.public_key)
                      for sn in live)
        mine = next(r for r, k in rtts if k == key)
        if sum(1 for r, _ in rtts if r < mine) / len(rtts) >= 0.10:
            top = rtts[: max(1, len(rtts) // 10)]
            outside.append({
                "rtt_ms": round(mine * 1000, 1), "best_ms": round(top[0][0] * 1000, 1),
                "top10_measured": sum(1 for _, k in top if k in client.discovery.measured),
                "moves": client.supervisor.late_moves, "refines": client.supervisor.late_refines})
    counts = sim.clients_per_supernode()
    nearest.update(
        attached=len(ranks), live_supernodes=len(live),
        share_top10=sum(r < 0.10 for r in ranks) / max(1, len(ranks)),
        rank_p50=ranks[len(ranks) // 2] if ranks else None,
        rank_p90=ranks[int(len(ranks) * 0.9)] if ranks else None,
        clients_max=max(counts, default=0), clients_mean=sum(counts) / max(1, len(counts)),
        late_moves=late_moves, late_refines=late_refines, outside=outside)
    return values


def main(argv: list[str]) -> int:
    n, m, hours, seed, out = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3]), argv[4]
    run.measure = measure
    params = run.Params(supernodes=n, users=m, hours=hours, churn="none", seed=seed, json=out,
                        users_as="daemons", join_window_s=60.0, lookups_per_user_h=6.0)
    doc = run.simulate(params)
    doc["nearest"] = nearest
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps(nearest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The real ``overlay.dht`` in tools/sim: 50 supernodes join over the simulated internet,
publish their users' presence and find every user; the same seed gives the same run."""

from __future__ import annotations

import dataclasses
from typing import Any

from tools.sim.metrics import OUTPUT_KEYS
from tools.sim.run import Params, simulate

#: 50 nodes, 20 users; 200 simulated seconds: joins in the first 10 s, presence every 60 s,
#: lookups (40 per user-hour) from 70 s on
SMALL = Params(supernodes=50, users=20, hours=200 / 3600, churn="none", seed=7,
               join_window_s=10.0, lookups_per_user_h=40.0, presence_refresh_s=60.0)


def outcome(doc: dict[str, Any]) -> dict[str, Any]:
    """What the simulated network did (not what simulating it cost)."""
    return {k: v for k, v in doc.items() if k not in ("wall_s", "peak_rss_mib")}


def test_fifty_supernodes_find_every_user() -> None:
    doc = simulate(SMALL)
    assert tuple(doc) == OUTPUT_KEYS
    assert doc["lookup_success"] == 1.0
    assert doc["lookup_p50_s"] is not None and 0.005 < doc["lookup_p50_s"] < 2.0
    assert doc["lookup_hops_p50"] is not None and doc["lookup_hops_p50"] <= 3
    assert doc["dht_msgs_per_node_s"] > 0
    assert doc["dht_msgs_per_node_s_max"] >= doc["dht_msgs_per_node_s"]
    assert doc["max_records_per_key"] == 1  # one device per user
    assert doc["attach_s_p50"] is None  # no clients attach yet
    assert doc["params"]["supernodes"] == 50 and doc["params"]["seed"] == 7


def test_the_seed_fixes_the_run() -> None:
    tiny = dataclasses.replace(SMALL, supernodes=15, users=8, hours=120 / 3600)
    first = outcome(simulate(tiny))
    assert first["lookup_success"] is not None
    assert outcome(simulate(tiny)) == first
    assert outcome(simulate(dataclasses.replace(tiny, seed=8))) != first

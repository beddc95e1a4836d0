"""``python -m tools.sim ... --plots DIR`` draws the run: four PNGs, the JSON unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from tools.sim.__main__ import main

PLOTS = ("lookup_latency_cdf.png", "load_per_node.png", "records_per_key.png", "failover.png")


def test_plots_are_written_next_to_the_same_json(tmp_path: Path) -> None:
    args = ["--supernodes", "6", "--users", "10", "--hours", "0.12", "--churn", "none",
            "--seed", "4", "--users-as", "daemons", "--join-window-s", "30",
            "--lookups-per-user-h", "60"]
    assert main([*args, "--json", str(tmp_path / "plain.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "drawn.json"),
                 "--plots", str(tmp_path / "plots")]) == 0
    for name in PLOTS:
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    plain = json.loads((tmp_path / "plain.json").read_text())
    drawn = json.loads((tmp_path / "drawn.json").read_text())
    for doc in (plain, drawn):
        doc.pop("wall_s"), doc.pop("peak_rss_mib"), doc["params"].pop("json")
        doc["params"].pop("plots")
    assert plain == drawn  # drawing changes nothing the simulation measured

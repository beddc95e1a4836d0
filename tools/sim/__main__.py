"""``python -m tools.sim --supernodes N --users M --hours H --churn none|skype|harsh --seed S
--json OUT [--plots DIR]``: a deterministic virtual-time simulation of the overlay (issue 14).

Writes the output document (:mod:`tools.sim.metrics`) to ``--json`` (``-``: stdout) and a
short summary to stderr. Exit codes: 0 done, 2 bad arguments or a part not implemented yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.sim.dhtsim import PRESENCE_REFRESH_S
from tools.sim.run import CHURN_MODELS, SIM_ID_PUZZLE_BITS, USERS_AS, Params, simulate
from tools.sim.world import DEFAULT_LOSS


def parse(argv: list[str] | None = None) -> Params:
    p = argparse.ArgumentParser(prog="python -m tools.sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--supernodes", type=int, default=100)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--churn", choices=CHURN_MODELS, default="none")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", required=True, help="output file ('-': stdout)")
    p.add_argument("--plots", default=None, help="directory for plots (needs matplotlib)")
    p.add_argument("--loss", type=float, default=DEFAULT_LOSS, help="datagram loss rate")
    p.add_argument("--id-puzzle-bits", type=int, default=SIM_ID_PUZZLE_BITS)
    p.add_argument("--join-window-s", type=float, default=600.0)
    p.add_argument("--lookups-per-user-h", type=float, default=1.0)
    p.add_argument("--presence-refresh-s", type=float, default=PRESENCE_REFRESH_S)
    p.add_argument("--progress-s", type=float, default=0.0,
                   help="a progress line on stderr every this many simulated seconds")
    p.add_argument("--users-as", choices=USERS_AS, default="records",
                   help="records: presence records published by supernodes (cheap); daemons: "
                        "real supernode and client daemons")
    a = p.parse_args(argv)
    return Params(a.supernodes, a.users, a.hours, a.churn, a.seed, a.json, a.plots, a.loss,
                  a.id_puzzle_bits, a.join_window_s, a.lookups_per_user_h,
                  a.presence_refresh_s, a.progress_s, a.users_as)


def main(argv: list[str] | None = None) -> int:
    params = parse(argv)
    if params.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("tools.sim: --plots needs matplotlib (pip install -e '.[bench]')",
                  file=sys.stderr)
            return 2
    try:
        doc = simulate(params)
    except (ValueError, NotImplementedError) as exc:
        print(f"tools.sim: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=2) + "\n"
    if params.json == "-":
        sys.stdout.write(text)
    else:
        Path(params.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

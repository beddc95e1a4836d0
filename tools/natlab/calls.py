"""The NAT lab's call matrix: for every ordered pair of router kinds (49), client
``A-1`` calls ``B-2`` for ``--seconds`` with ``overlay call --json``, judged by the final
line (:mod:`tests.helpers.lab_calls`: the path of the calls' table, loss and MOS thresholds).

``python -m tools.natlab.calls [--seconds 20] [--impair 40ms,1%] [--pairs all|cone-cone,...]
[--impair-supernodes] [--parallel 7] [--json OUT] [--keep]``

``--impair`` impairs every client's uplink, each direction; the supernodes' links only with
``--impair-supernodes``.

Needs root (the NAT lab). Not part of CI (about 4 minutes for 49 pairs of 20 s); the CI-sized
test is ``tests/lab/test_calls_lab.py``. Prints a table to stderr, writes the per-pair rows
(and the CPU load the run put on the machine) to ``--json``; exit 0 when every pair met its
thresholds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers.lab_calls import IMPAIRMENT, PARALLEL, call_logs, run_calls, table
from tests.helpers.lab_overlay import KINDS, LabOverlay, lab_available, two_per_kind


def parse_impair(text: str) -> dict[str, float]:
    """``40ms,1%`` -> ``{"delay_ms": 40, "loss_pct": 1}``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:ms)?\s*,\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: DELAY_MS,LOSS_PCT like 40ms,1%")
    return {"delay_ms": float(m.group(1)), "loss_pct": float(m.group(2))}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    if text == "all":
        return [(a, b) for a in KINDS for b in KINDS]
    pairs = []
    for item in text.split(","):
        a, sep, b = item.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r}: CALLER:CALLEE, e.g. cone:tcp-only")
        if a not in KINDS or b not in KINDS:
            raise argparse.ArgumentTypeError(f"{item!r}: kinds are {', '.join(KINDS)}")
        pairs.append((a, b))
    return pairs


def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> dict[str, Any]:
    impaired = args.impair is not None
    hosts = {f"{a}-1" for a, _ in args.pairs} | {f"{b}-2" for _, b in args.pairs}
    clients = {host: kind for host, kind in two_per_kind().items() if host in hosts}
    work = Path(tempfile.mkdtemp(prefix="lc-"))
    started = time.monotonic()
    result: dict[str, Any] = {"seconds": args.seconds, "impairment": args.impair,
                              "impair_supernodes": args.impair_supernodes,
                              "parallel": args.parallel, "work_dir": str(work)}
    try:
        with LabOverlay(work, clients, netem=args.impair,
                        netem_supernodes=args.impair_supernodes) as ov:
            assert ov.lab is not None
            result["netem_backend"] = ov.lab.netem_backend
            result["setup_s"] = round(time.monotonic() - started, 1)
            busy0, total0 = cpu_seconds()
            t0 = time.monotonic()
            outcomes = run_calls(ov, args.pairs, args.seconds, impaired, args.parallel)
            busy1, total1 = cpu_seconds()
            result["calls_s"] = round(time.monotonic() - t0, 1)
            result["cpu_busy_pct"] = round(100 * (busy1 - busy0) / (total1 - total0), 1)
            result["pairs"] = [o.row() for o in outcomes]
            print(table(outcomes), file=sys.stderr)
            for o in outcomes:
                if o.problems:
                    print(f"- {o.pair}: {'; '.join(o.problems)}\n{call_logs(ov, o)}",
                          file=sys.stderr)
            ov.check_alive()
    finally:
        result["run_s"] = round(time.monotonic() - started, 1)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            result.pop("work_dir")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.natlab.calls",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="each call's length (20)")
    ap.add_argument("--impair", type=parse_impair, default=None, metavar="DELAY,LOSS",
                    help="impair every client's and supernode's link, each direction "
                         f"(the issue's: {IMPAIRMENT['delay_ms']:g}ms,"
                         f"{IMPAIRMENT['loss_pct']:g}%%)")
    ap.add_argument("--impair-supernodes", action="store_true",
                    help="impair the supernodes' links too (the file matrix does)")
    ap.add_argument("--pairs", type=parse_pairs, default=parse_pairs("all"),
                    help="all (default), or CALLER:CALLEE,... e.g. cone:cone,public:tcp-only")
    ap.add_argument("--parallel", type=int, default=PARALLEL,
                    help=f"calls at once ({PARALLEL})")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (daemon logs)")
    args = ap.parse_args(argv)
    ok, why = lab_available()
    if not ok:
        print(f"natlab calls: {why}", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    bad = [r["pair"] for r in result.get("pairs", []) if not r["ok"]]
    print(f"{len(result.get('pairs', [])) - len(bad)}/{len(result.get('pairs', []))} pairs "
          f"ok; calls {result.get('calls_s')} s, CPU busy {result.get('cpu_busy_pct')} %, "
          f"run {result['run_s']} s", file=sys.stderr)
    return 1 if bad or not result.get("pairs") else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m tools.fuzz [--cases N] [--only NAME] [--seed S] [--json OUT]``: run every fuzz
target of tests/fuzz/targets.py for N cases (default 100,000) and print a JSON summary: per
decoder, cases run, how many decoded (the call returned without its typed error), uncaught
exceptions (0 expected, the first few kept with their input), seconds, cases/s. SIGINT stops
the run and still prints what ran ("interrupted": true). Exit 1 when any decoder raised
something other than its typed error."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.fuzz.targets import TARGETS, Target

#: uncaught exceptions kept per decoder (the first ones, with their input)
MAX_KEPT = 5
#: a progress line on stderr every this many cases
PROGRESS_EVERY = 10_000


def run_target(name: str, target: Target, cases: int, seed_value: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"cases": 0, "decoded": 0, "uncaught": 0, "examples": []}

    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def one(case: Any) -> None:
        stats["cases"] += 1
        if stats["cases"] % PROGRESS_EVERY == 0:
            print(f"{name}: {stats['cases']} cases, {stats['uncaught']} uncaught, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        try:
            target.call(case)
            stats["decoded"] += 1
        except target.allowed:
            pass
        except Exception as exc:  # the finding: counted and kept, the run goes on
            stats["uncaught"] += 1
            if len(stats["examples"]) < MAX_KEPT:
                stats["examples"].append({
                    "input": repr(case)[:400],
                    "exception": f"{type(exc).__name__}: {exc}"[:300],
                    "where": traceback.format_exc(limit=-2)[-600:],
                })

    started = time.perf_counter()
    try:
        seed(seed_value + sum(name.encode()))(one)()
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: report what ran so far
        stats["interrupted"] = True
    stats["seconds"] = round(time.perf_counter() - started, 1)
    stats["cases_per_s"] = round(stats["cases"] / max(stats["seconds"], 1e-9))
    if not stats["examples"]:
        del stats["examples"]
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000, help="cases per decoder")
    parser.add_argument("--only", action="append", choices=sorted(TARGETS), metavar="NAME",
                        help="run only this decoder (repeatable); names: "
                        + ", ".join(sorted(TARGETS)))
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the summary here")
    args = parser.parse_args(argv)
    # a background job may start with SIGINT ignored; SIGTERM stops the run the same way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary: dict[str, Any] = {}
    for name in args.only or sorted(TARGETS):
        summary[name] = run_target(name, TARGETS[name], args.cases, args.seed)
        print(f"{name}: {json.dumps(summary[name])}", file=sys.stderr, flush=True)
        if summary[name].get("interrupted"):
            break
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if any(s["uncaught"] for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

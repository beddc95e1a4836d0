"""``overlay demo``: the command; the demo itself is :mod:`overlay.cli.loopback_demo`, imported
only when it runs (it needs every part of the overlay, which other commands do not)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_demo(args: argparse.Namespace) -> int:
    from overlay.cli.loopback_demo import main

    return main()


def add_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a whole overlay on loopback and show it working")
    p.set_defaults(func=cmd_demo)

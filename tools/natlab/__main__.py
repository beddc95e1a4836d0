"""Command line for the NAT lab: ``python -m tools.natlab {up,plan,exec,list,cleanup}``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from .lab import Lab, LabError, cleanup, lab_owner_alive, list_labs, list_netns
from .topology import Topology, TopologyError


def _print_table(desc: dict[str, Any]) -> None:
    rows = [("host", "kind", "host_ip", "public_ip", "netem", "netns")]
    for name, h in desc["hosts"].items():
        netem = h.get("netem")
        shown = (
            " ".join(f"{k}={v:g}" for k, v in netem.items() if v) if isinstance(netem, dict) else ""
        )
        rows.append((name, h["kind"], h["host_ip"], h["public_ip"], shown or "-", h["netns"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_plan(args: argparse.Namespace) -> int:
    lab = Lab(Topology.from_toml(args.topology), prefix="plan")
    desc = lab.describe()
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        _print_table(desc)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    topology = Topology.from_toml(args.topology)
    stop = threading.Event()
    # Ctrl-C, SIGTERM and SIGHUP all end the wait and tear the lab down.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    with Lab(topology, prefix=args.prefix, netem_backend=args.netem_backend) as lab:
        desc = lab.describe()
        if args.json:
            print(json.dumps(desc), flush=True)
        else:
            print(f"natlab {lab.prefix} is up (netem backend: {lab.netem_backend or '-'})")
            _print_table(desc)
            first = lab.hosts[0]
            print(
                f"\nshell in a host:  python -m tools.natlab exec {lab.prefix} {first}\n"
                f"router ruleset:   python -m tools.natlab exec {lab.prefix} HOST --router "
                f"-- nft list ruleset\n"
                f"Ctrl-C tears the lab down.",
                flush=True,
            )
        print(f"ready {lab.prefix}", flush=True)
        while not stop.wait(1.0):
            pass
        print(f"tearing down {lab.prefix}", flush=True)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    if args.inet:
        ns = f"{args.prefix}-inet"
    else:
        if not args.host:
            print("exec: give a HOST (or --inet)", file=sys.stderr)
            return 2
        ns = f"{args.prefix}-{'c' if args.carrier else 'r' if args.router else 'h'}-{args.host}"
    if ns not in list_netns():
        print(f"exec: no namespace {ns} (see: python -m tools.natlab list)", file=sys.stderr)
        return 2
    argv = list(args.command)
    if not argv:
        argv = [os.environ.get("SHELL", "/bin/bash")]
    os.execvp("ip", ["ip", "netns", "exec", ns, *argv])
    return 127  # not reached


def cmd_list(args: argparse.Namespace) -> int:
    labs = list_labs()
    if not labs:
        print("no labs")
    for prefix, namespaces in sorted(labs.items()):
        alive = lab_owner_alive(prefix)
        owner = {True: "owner alive", False: "owner gone (stale)", None: "no owner (stale)"}[alive]
        print(f"{prefix}: {len(namespaces)} namespaces, {owner}")
        if args.verbose:
            for ns in namespaces:
                print(f"  {ns}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    prefixes = list(args.prefixes)
    if args.stale:
        prefixes += [p for p in list_labs() if not lab_owner_alive(p)]
    if not prefixes:
        print("nothing to clean up (give PREFIX... or --stale)")
        return 0
    for prefix in prefixes:
        removed = cleanup(prefix)
        print(f"{prefix}: removed {len(removed)}: {', '.join(removed) or 'nothing'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.natlab", description="NAT lab in network namespaces"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="build a lab from a TOML topology, wait for Ctrl-C, tear down")
    p.add_argument("topology", help="TOML file with [hosts.NAME] tables")
    p.add_argument("--prefix", help="use this prefix instead of a random nlXXXX")
    p.add_argument("--netem-backend", choices=["auto", "tc", "wire"], default=None)
    p.add_argument("--json", action="store_true", help="print the description as one JSON line")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("plan", help="print the address plan of a topology without building it")
    p.add_argument("topology")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "exec",
        help="run a command (default: a shell) in a lab host",
        usage="python -m tools.natlab exec PREFIX [HOST] [--router | --carrier | --inet] "
              "[-- COMMAND...]",
    )
    p.add_argument("prefix")
    p.add_argument("host", nargs="?")
    p.add_argument("--router", action="store_true",
                   help="in the host's router instead (on a shared LAN: give the owner's name)")
    p.add_argument("--carrier", action="store_true",
                   help="in the carrier router of a cgnat host instead")
    p.add_argument("--inet", action="store_true", help="in the public segment's namespace")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("list", help="list labs on this machine")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("cleanup", help="delete a lab's processes, namespaces and links")
    p.add_argument("prefixes", nargs="*", metavar="PREFIX")
    p.add_argument("--stale", action="store_true", help="every lab whose owner process is gone")
    p.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:  # everything after "--" is the command for "exec"
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.command = command
    try:
        return int(args.func(args))
    except (LabError, TopologyError, ValueError) as exc:
        print(f"natlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

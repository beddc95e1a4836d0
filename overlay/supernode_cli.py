"""``overlay supernode`` and ``overlay lookup``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from overlay import records
from overlay.addresses import resolve
from overlay.cli import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    _add_node_arguments,
    _hostports,
    _node_options,
    run_async,
)
from overlay.identity import Identity
from overlay.session_io import ClientSession, SessionError
from overlay.tcp_service import ServiceLimits

EXIT_OFFLINE = 3


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parse_rate(text: str) -> int:
    """``2Mbit``, ``500kbit``, ``1Gbit`` or plain bits per second -> bits per second."""
    units = {"gbit": 10**9, "mbit": 10**6, "kbit": 10**3, "bit": 1}
    lowered = text.strip().lower()
    unit = next((u for u in units if lowered.endswith(u)), "")
    number, factor = (lowered[: -len(unit)], units[unit]) if unit else (lowered, 1)
    try:
        value = float(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 2Mbit") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a rate cannot be negative")
    return int(value)


def cmd_supernode(args: argparse.Namespace) -> int:
    from overlay.supernode import Supernode, SupernodeOptions

    opts = _node_options(args)
    host = args.listen[0]
    if host in ("0.0.0.0", "::") and args.advertise is None:
        print("overlay supernode: listening on all addresses needs --advertise IP:PORT "
              "(the public address clients and other nodes reach)", file=sys.stderr)
        return EXIT_USAGE
    opts.limits = ServiceLimits(
        heartbeat_s=args.heartbeat,
        handshake_timeout_s=args.handshake_timeout,
        max_connections_per_ip=args.max_conns_per_ip,
    )
    sn = SupernodeOptions(
        max_clients=args.max_clients,
        record_refresh_s=args.record_refresh,
        relay_capacity_bps=0 if args.no_relay else args.relay_budget,
        relay_session_cap_bps=args.relay_session_cap,
        relay_max_sessions=args.relay_max_sessions,
    )

    async def main() -> int:
        await Supernode(opts, sn).run_until_signalled()
        return 0

    return run_async(main())


def lookup_json(name: str, found: list[records.SignedRecord]) -> dict[str, Any]:
    devices = []
    keys = set()
    now = time.time()
    for signed in sorted(found, key=lambda s: s.record.issued_at, reverse=True):
        r = signed.record
        assert isinstance(r, records.PresenceRecord)
        keys.add(r.user_key.hex())
        devices.append({
            "device": r.device,
            "online": r.online and r.expires_at > now,
            "supernode": f"{r.supernode_host}:{r.supernode_port}" if r.online else None,
            "supernode_key": r.supernode_key.hex() or None,
            "capabilities": list(r.capabilities),
            "seq": r.seq,
            "issued_at": r.issued_at,
            "expires_at": r.expires_at,
        })
    return {
        "user": name,
        "online": any(d["online"] for d in devices),
        "public_key": sorted(keys)[0] if len(keys) == 1 else (sorted(keys) or None),
        "devices": devices,
    }


async def lookup_via(
    addrs: list[tuple[str, int]], name: str, timeout: float
) -> tuple[list[records.SignedRecord], str]:
    """Ask each node in turn over TCP; return the verified records and who answered."""
    identity = Identity.generate()  # throwaway: a lookup publishes nothing
    errors = []
    for host, port in await resolve(addrs):
        try:
            session = await ClientSession.connect(
                host, port, identity, expected_node_key=None, lookup_only=True, timeout=timeout
            )
        except SessionError as exc:
            errors.append(str(exc))
            continue
        try:
            return await session.lookup(name, timeout=timeout), f"{host}:{port}"
        except SessionError as exc:
            errors.append(f"{host}:{port}: {exc}")
        finally:
            session.close("done")
    raise SessionError("; ".join(errors) or "no address resolved")


def cmd_lookup(args: argparse.Namespace) -> int:
    try:
        records.check_name(args.name)
    except records.RecordError as exc:
        print(f"overlay lookup: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        try:
            found, via = await lookup_via(args.bootstrap, args.name, args.timeout)
        except SessionError as exc:
            print(f"overlay lookup: no node reachable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        result = lookup_json(args.name, found)
        if args.json:
            print(json.dumps(result))
        else:
            console = Console()
            if not found:
                console.print(f"{args.name}: unknown (asked {via})")
            else:
                table = Table(title=f"{args.name} — key {str(result['public_key'])[:16]}…, "
                              "every signature verified here")
                for column in ("device", "status", "supernode", "seq", "expires in"):
                    table.add_column(column)
                for d in result["devices"]:
                    table.add_row(d["device"], "online" if d["online"] else "offline",
                                  d["supernode"] or "-", str(d["seq"]),
                                  f"{max(0.0, d['expires_at'] - time.time()):.0f}s")
                console.print(table)
        await asyncio.sleep(0)
        return 0 if result["online"] else EXIT_OFFLINE

    return run_async(main())


def add_commands(sub: Any) -> None:
    p = sub.add_parser("supernode", help="run a supernode")
    _add_node_arguments(p, bootstrap_required=True)
    p.add_argument("--max-clients", type=int, default=10_000, metavar="N",
                   help="clients admitted before new ones are sent elsewhere")
    p.add_argument("--relay-budget", type=parse_rate, default=parse_rate("2Mbit"),
                   metavar="RATE", help="total relay forwarding rate, e.g. 2Mbit")
    p.add_argument("--relay-session-cap", type=parse_rate, default=0, metavar="RATE",
                   help="the most one relay session may use, both directions together "
                        "(default: a quarter of the budget, at least 1Mbit)")
    p.add_argument("--relay-max-sessions", type=int, default=32, metavar="N",
                   help="relay sessions at once (waiting ones count)")
    p.add_argument("--no-relay", action="store_true",
                   help="do not relay for others (relay connections are refused)")
    p.add_argument("--heartbeat", type=_positive, default=30.0, metavar="S",
                   help="client heartbeat interval (dead after 3 missed)")
    p.add_argument("--handshake-timeout", type=_positive, default=10.0, metavar="S")
    p.add_argument("--max-conns-per-ip", type=int, default=64, metavar="N")
    p.add_argument("--record-refresh", type=_positive, default=60.0, metavar="S",
                   help="how often the supernode re-signs its record")
    p.set_defaults(func=cmd_supernode)

    p = sub.add_parser("lookup", help="look a user up (verifies every signature itself)")
    p.add_argument("name")
    p.add_argument("--bootstrap", type=_hostports, required=True, metavar="HOST:PORT[,...]",
                   help="supernodes or bootstrap nodes to ask over TCP")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=_positive, default=5.0, metavar="S")
    p.set_defaults(func=cmd_lookup)

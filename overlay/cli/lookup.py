"""``overlay lookup NAME``: who is online, and where, every signature verified here."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from overlay.attach.adapter import SessionError
from overlay.cli.common import (
    EXIT_OFFLINE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    hostports,
    positive,
    run_async,
)
from overlay.client.lookup import lookup_via
from overlay.core import records


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
        return EXIT_OK if result["online"] else EXIT_OFFLINE

    return run_async(main())


def add_commands(sub: Any) -> None:
    p = sub.add_parser("lookup", help="look a user up (verifies every signature itself)")
    p.add_argument("name")
    p.add_argument("--bootstrap", type=hostports, required=True, metavar="HOST:PORT[,...]",
                   help="supernodes or bootstrap nodes to ask over TCP")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=positive, default=5.0, metavar="S")
    p.set_defaults(func=cmd_lookup)

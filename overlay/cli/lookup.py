"""``overlay lookup NAME[#KEYPREFIX]``: who is online, and where, every signature verified
here; a name whose records carry several keys is a conflict (exit 4), never resolved
silently."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from overlay.attach.adapter import SessionError
from overlay.cli.common import (
    EXIT_CONFLICT,
    EXIT_OFFLINE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    hostports,
    positive,
    run_async,
)
from overlay.client.lookup import lookup_via, name_keys
from overlay.core import records
from overlay.core.user_ref import UserRef, parse_user_ref


def lookup_json(ref: UserRef, found: list[records.SignedRecord]) -> dict[str, Any]:
    """One shape always: ``public_key`` is one hex string (null only for an unknown user; in
    a conflict the first of ``keys``, not an owner), ``conflict`` and ``keys`` are always
    there."""
    kept, keys = name_keys(ref, found)
    devices = []
    now = time.time()
    for signed in sorted(kept, key=lambda s: s.record.issued_at, reverse=True):
        r = signed.record
        if not isinstance(r, records.PresenceRecord):
            continue
        devices.append({
            "device": r.device,
            "public_key": r.user_key.hex(),
            "online": r.online and r.expires_at > now,
            "supernode": f"{r.supernode_host}:{r.supernode_port}" if r.online else None,
            "supernode_key": r.supernode_key.hex() or None,
            "capabilities": list(r.capabilities),
            "seq": r.seq,
            "issued_at": r.issued_at,
            "expires_at": r.expires_at,
        })
    return {
        "user": ref.name,
        "online": any(d["online"] for d in devices),
        "public_key": keys[0].hex() if keys else None,
        "conflict": len(keys) > 1,
        "keys": [k.hex() for k in keys],
        "devices": devices,
    }


def print_human(ref: UserRef, result: dict[str, Any], via: str) -> None:
    console = Console()
    name = escape(str(ref))
    if result["conflict"]:
        console.print(f"{name}: CONFLICT: the name's records carry {len(result['keys'])} keys "
                      f"and its holders decide none (asked {via}):")
        for key in result["keys"]:
            console.print(f"  {key}")
        console.print(f"Name the one you mean: {escape(ref.name)}#KEYPREFIX (8+ hex digits).")
        return
    if result["public_key"] is None:
        console.print(f"{name}: unknown (asked {via})")
        return
    table = Table(title=f"{name} — key {result['public_key'][:16]}…, "
                  "every signature verified here")
    for column in ("device", "status", "supernode", "seq", "expires in"):
        table.add_column(column)
    for d in result["devices"]:
        table.add_row(escape(d["device"]), "online" if d["online"] else "offline",
                      d["supernode"] or "-", str(d["seq"]),
                      f"{max(0.0, d['expires_at'] - time.time()):.0f}s")
    console.print(table)


def cmd_lookup(args: argparse.Namespace) -> int:
    try:
        ref = parse_user_ref(args.name)
    except records.RecordError as exc:
        print(f"overlay lookup: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        try:
            found, via = await lookup_via(args.bootstrap, ref.name, args.timeout, claims=True)
        except SessionError as exc:
            print(f"overlay lookup: no node reachable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        result = lookup_json(ref, found)
        if args.json:
            print(json.dumps(result))
        else:
            print_human(ref, result, via)
        await asyncio.sleep(0)
        if result["conflict"]:
            return EXIT_CONFLICT
        return EXIT_OK if result["online"] else EXIT_OFFLINE

    return run_async(main())


def add_commands(sub: Any) -> None:
    p = sub.add_parser("lookup", help="look a user up (verifies every signature itself)")
    p.add_argument("name", metavar="NAME[#KEYPREFIX]",
                   help="a user name; #KEYPREFIX (8+ hex digits of the key) picks one key")
    p.add_argument("--bootstrap", type=hostports, required=True, metavar="HOST:PORT[,...]",
                   help="supernodes or bootstrap nodes to ask over TCP")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=positive, default=5.0, metavar="S")
    p.set_defaults(func=cmd_lookup)

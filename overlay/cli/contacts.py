"""``overlay contacts``, ``overlay requests``, ``overlay accept``, ``overlay decline``: the
running client's contacts (pinned keys) and contact requests, over its control socket.

Exit codes: 0 done, 1 the client refused (e.g. a key that differs from the pinned one, no such
request), 2 usage, 69 the client is not reachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from overlay.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, user_name
from overlay.client.control import ControlSocketError, control_request
from overlay.core.records import RecordError
from overlay.core.user_ref import parse_user_ref

TIMEOUT_S = 15.0


def _ask(command: str, args: argparse.Namespace, request: dict[str, Any]) -> int:
    try:
        answer = control_request(args.control, request, timeout=TIMEOUT_S)
    except ControlSocketError as exc:
        print(f"overlay {command}: the client is not reachable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if not answer.get("ok"):
        print(f"overlay {command}: {answer.get('error', 'failed')}", file=sys.stderr)
        return EXIT_FAILURE
    answer.pop("ok", None)
    if getattr(args, "json", False):
        print(json.dumps(answer))
        return EXIT_OK
    _print(answer)
    return EXIT_OK


def _age(t: object) -> str:
    return f"{max(0.0, time.time() - float(t)):.0f}s ago" if isinstance(t, int | float) else "-"


def _print(answer: dict[str, Any]) -> None:
    if "contacts" in answer:
        for c in answer["contacts"]:
            print(f"{c['user']}  {c['public_key']}")
        if not answer["contacts"]:
            print(f"no contacts (invites from others: {answer.get('accept_from')})")
    elif "requests" in answer:
        for r in answer["requests"]:
            print(f"{r['user']}  {r['public_key']}  device {r['device']}, "
                  f"{r['invites']} invite(s), last {_age(r['last_at'])}")
        if not answer["requests"]:
            print("no pending requests")
    elif "contact" in answer:
        c = answer["contact"]
        print(f"{c['user']} is a contact, key {c['public_key']}")
    elif "forgotten" in answer:
        print(f"forgot {answer['forgotten']} and its key")
    elif "declined" in answer:
        print(f"declined {answer['declined']}'s request")


def cmd_contacts(args: argparse.Namespace) -> int:
    action, rest = args.action, args.args
    if action == "list" and not rest:
        return _ask("contacts", args, {"cmd": "contacts"})
    if action in ("add", "forget") and len(rest) == 1:
        try:
            ref = parse_user_ref(rest[0])
        except RecordError as exc:
            print(f"overlay contacts: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if action == "forget" and ref.key_prefix is not None:
            print("overlay contacts: forget NAME (no #KEY)", file=sys.stderr)
            return EXIT_USAGE
        cmd = "contact_add" if action == "add" else "contact_forget"
        return _ask("contacts", args, {"cmd": cmd, "user": str(ref)})
    print("overlay contacts: list | add NAME | add NAME#KEYPREFIX | forget NAME",
          file=sys.stderr)
    return EXIT_USAGE


def cmd_requests(args: argparse.Namespace) -> int:
    return _ask("requests", args, {"cmd": "requests"})


def cmd_accept(args: argparse.Namespace) -> int:
    return _ask("accept", args, {"cmd": "accept", "user": args.name})


def cmd_decline(args: argparse.Namespace) -> int:
    return _ask("decline", args, {"cmd": "decline", "user": args.name})


def _control(p: argparse.ArgumentParser, json_help: str | None = None) -> None:
    p.add_argument("--control", required=True, metavar="PATH",
                   help="the running client's control socket")
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("contacts", help="list, add or forget contacts (pinned keys)")
    p.add_argument("action", nargs="?", default="list", choices=["list", "add", "forget"])
    p.add_argument("args", nargs="*", metavar="NAME[#KEYPREFIX]")
    _control(p, 'print the client\'s JSON answer ({"contacts": [...]}, {"contact": {...}})')
    p.set_defaults(func=cmd_contacts)

    p = sub.add_parser("requests", help="pending contact requests")
    _control(p, 'print {"requests": [{"user", "device", "public_key", "first_at", '
                '"last_at", "invites"}]}')
    p.set_defaults(func=cmd_requests)

    p = sub.add_parser("accept", help="accept a contact request (and answer its invite)")
    p.add_argument("name", type=user_name, metavar="NAME")
    _control(p, 'print {"contact": {...}, "answering": true}')
    p.set_defaults(func=cmd_accept)

    p = sub.add_parser("decline", help="decline a contact request")
    p.add_argument("name", type=user_name, metavar="NAME")
    _control(p)
    p.set_defaults(func=cmd_decline)

"""``overlay call NAME[#KEYPREFIX] --control PATH [--seconds S] [--bitrate 24kbit] [--json]
[--wait S]``:
have the running client call a user (synthetic audio, 20 ms frames, both ways).

With ``--json``: one JSON line a second and a last one with ``"final": true``, each
``{"path", "relay", "seconds", "frames_sent", "frames_received", "loss_pct", "late_pct",
"jitter_ms", "one_way_ms_p50", "one_way_ms_p95", "mos", "final"}``. Without: a live line
and a summary. Exit codes: 0 the call ran, 3 the user is offline or unknown, 5 a contact
request not accepted, 1 any other failure, 2 bad arguments, 69 no client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from overlay.call.session import DEFAULT_BITRATE_BPS
from overlay.cli.common import (
    EXIT_NOT_ACCEPTED,
    EXIT_OFFLINE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    positive,
    rate,
    refused,
    run_async,
)
from overlay.client.control import ControlSocketError, control_request_async
from overlay.core.offers import MAX_BITRATE_BPS, MIN_BITRATE_BPS
from overlay.core.records import RecordError
from overlay.core.user_ref import parse_user_ref
from overlay.media.consent import ACCEPT_WAIT_S, MAX_ACCEPT_WAIT_S

#: how often the live lines are asked of the client
POLL_S = 0.25
#: the call's own seconds plus this for setting it up and ending it
SETUP_MARGIN_S = 180.0


def _text(line: dict[str, Any]) -> str:
    via = f"relay {line['relay']}" if line.get("relay") else line.get("path")
    return (f"{line['seconds']:6.1f}s via {via}: sent {line['frames_sent']} "
            f"received {line['frames_received']} loss {line['loss_pct']}% "
            f"late {line['late_pct']}% jitter {line['jitter_ms']} ms "
            f"one-way p50 {line['one_way_ms_p50']} ms p95 {line['one_way_ms_p95']} ms "
            f"MOS {line['mos']}")


class Printer:
    """Prints each line once, in order: live ones as the client reports them, then the
    rest from the final reply."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.last_seconds = -1.0

    def line(self, line: dict[str, Any]) -> None:
        seconds = float(line.get("seconds", 0))
        if seconds <= self.last_seconds and not line.get("final"):
            return
        self.last_seconds = seconds
        if self.as_json:
            print(json.dumps(line), flush=True)
        elif line.get("final"):
            print(f"\rcall ended after {_text(line)}" if sys.stdout.isatty()
                  else f"call ended after {_text(line)}", flush=True)
        elif sys.stdout.isatty():  # the live line, rewritten in place
            print(f"\r{_text(line)}", end="", flush=True)


async def _live(control: Path, to: str, printer: Printer, done: asyncio.Event) -> None:
    """Print the latest line of our call in progress (the newest outgoing call to ``to``)."""
    while not done.is_set():
        try:
            reply = await control_request_async(control, {"cmd": "calls"}, timeout=2)
        except ControlSocketError:
            reply = {}
        ours = [c for c in reply.get("calls") or [] if isinstance(c, dict)
                and c.get("peer") == to and c.get("outgoing") and c.get("active")]
        if ours and isinstance(ours[-1].get("line"), dict) and not done.is_set():
            printer.line(ours[-1]["line"])
        try:
            async with asyncio.timeout(POLL_S):
                await done.wait()
        except TimeoutError:
            pass


def cmd_call(args: argparse.Namespace) -> int:
    try:
        to = parse_user_ref(args.name).name
    except RecordError as exc:
        print(f"overlay call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.wait > MAX_ACCEPT_WAIT_S:
        print(f"overlay call: --wait is at most {MAX_ACCEPT_WAIT_S:g}", file=sys.stderr)
        return EXIT_USAGE
    if not MIN_BITRATE_BPS <= args.bitrate <= MAX_BITRATE_BPS:
        print(f"overlay call: --bitrate is {MIN_BITRATE_BPS // 1000} to "
              f"{MAX_BITRATE_BPS // 1000} kbit/s", file=sys.stderr)
        return EXIT_USAGE
    control = Path(args.control)
    printer = Printer(args.json)

    async def main() -> int:
        done = asyncio.Event()
        live = asyncio.create_task(_live(control, to, printer, done))
        try:
            reply: dict[str, Any] = await control_request_async(
                control, {"cmd": "call", "user": args.name, "seconds": args.seconds,
                          "bitrate_bps": args.bitrate, "wait_s": args.wait},
                timeout=args.wait + args.seconds + SETUP_MARGIN_S)
        except ControlSocketError as exc:
            print(f"overlay call: the client is not reachable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            done.set()
            await live
        if not reply.get("ok"):
            return refused("call", reply,
                           {"offline": EXIT_OFFLINE, "not_accepted": EXIT_NOT_ACCEPTED})
        for line in [*(reply.get("lines") or []), reply.get("final")]:
            if isinstance(line, dict):
                printer.line(line)
        return EXIT_OK

    return run_async(main())


def add_commands(sub: Any) -> None:
    p = sub.add_parser("call", help="call a user through the running client")
    p.add_argument("name", metavar="NAME[#KEYPREFIX]",
                   help="the user; #KEYPREFIX (8 or more hex digits) selects its key")
    p.add_argument("--control", required=True, metavar="PATH",
                   help="the running client's control socket")
    p.add_argument("--seconds", type=positive, default=10.0, metavar="S",
                   help="how long the call lasts (default 10)")
    p.add_argument("--bitrate", type=rate, default=DEFAULT_BITRATE_BPS, metavar="RATE",
                   help="the synthetic audio's bitrate, e.g. 24kbit (default), 64kbit")
    p.add_argument("--json", action="store_true",
                   help='one JSON line a second, the last with "final": true')
    p.add_argument("--wait", type=positive, default=ACCEPT_WAIT_S, metavar="S",
                   help="when the callee keeps the invite as a contact request, wait this "
                        f"long for it to be accepted (default {ACCEPT_WAIT_S:g}, at most "
                        f"{MAX_ACCEPT_WAIT_S:g}); then exit {EXIT_NOT_ACCEPTED}")
    p.set_defaults(func=cmd_call)

"""``overlay send NAME[#KEYPREFIX] FILE --control PATH [--json] [--wait S]``: have the running
client send a file.

When the receiver keeps the invite as a contact request, the command says so on stderr and
waits up to ``--wait`` seconds for it to be accepted; it exits with
:data:`~overlay.cli.common.EXIT_NOT_ACCEPTED` (5) when it is not (or is declined).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from overlay.cli.common import (
    EXIT_NOT_ACCEPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    positive,
    refused,
    run_async,
)
from overlay.client.control import ControlSocketError, control_request_async
from overlay.core.records import RecordError
from overlay.core.user_ref import parse_user_ref
from overlay.media.consent import ACCEPT_WAIT_S, MAX_ACCEPT_WAIT_S

SEND_TIMEOUT_S = 3600.0


async def _sending(control: Path, name: str) -> dict[str, Any] | None:
    """The client's progress entry for the file ``name``, if it is being sent."""
    try:
        status = await control_request_async(control, {"cmd": "status"}, timeout=2)
    except ControlSocketError:
        return None
    for item in status.get("sending") or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    return None


async def _pause(done: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await done.wait()
    except TimeoutError:
        pass


async def _progress(control: Path, name: str, to: str, done: asyncio.Event) -> None:
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(f"connecting for {name}", total=None)
        while not done.is_set():
            item = await _sending(control, name)
            if item is not None and item.get("state") == "waiting for acceptance":
                bar.update(task, description=f"waiting for {to} to accept the contact request")
            elif item is not None and item.get("path"):
                bar.update(task, description=f"{name} via {item.get('path')}",
                           completed=item.get("sent", 0), total=item.get("size") or None)
            await _pause(done, 0.2)


async def _tell_waiting(control: Path, name: str, to: str, wait: float,
                        done: asyncio.Event) -> None:
    """Without a progress bar: say once on stderr that the receiver has not accepted yet."""
    while not done.is_set():
        item = await _sending(control, name)
        if item is not None and item.get("state") == "waiting for acceptance":
            print(f"overlay send: {to} has not accepted a contact request from you yet; "
                  f"waiting up to {wait:g}s", file=sys.stderr, flush=True)
            return
        await _pause(done, 0.5)


def cmd_send(args: argparse.Namespace) -> int:
    path = Path(args.file).resolve()
    if not path.is_file():
        print(f"overlay send: {args.file} is not a file", file=sys.stderr)
        return EXIT_USAGE
    try:
        to = parse_user_ref(args.name).name
    except RecordError as exc:
        print(f"overlay send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.wait > MAX_ACCEPT_WAIT_S:
        print(f"overlay send: --wait is at most {MAX_ACCEPT_WAIT_S:g}", file=sys.stderr)
        return EXIT_USAGE
    control = Path(args.control)

    async def main() -> int:
        done = asyncio.Event()
        if not args.json and sys.stderr.isatty():
            bar = asyncio.create_task(_progress(control, path.name, to, done))
        else:
            bar = asyncio.create_task(_tell_waiting(control, path.name, to, args.wait, done))
        try:
            reply: dict[str, Any] = await control_request_async(
                control, {"cmd": "send", "user": args.name, "path": str(path),
                          "wait_s": args.wait}, timeout=SEND_TIMEOUT_S)
        except ControlSocketError as exc:
            print(f"overlay send: the client is not reachable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            done.set()
            await bar
        if not reply.get("ok"):
            return refused("send", reply, {"not_accepted": EXIT_NOT_ACCEPTED})
        result = {k: reply.get(k)
                  for k in ("path", "technique", "relay", "bytes", "seconds", "sha256",
                            "upgraded_from")}
        if args.json:
            print(json.dumps(result))
        else:
            via = f"relay {result['relay']}" if result["relay"] else result["path"]
            rate = (result["bytes"] or 0) / max(result["seconds"] or 1e-9, 1e-9) / 1e6
            print(f"sent {path.name} to {args.name}: {result['bytes']} bytes in "
                  f"{result['seconds']:.2f}s ({rate:.1f} MB/s) via {via}, "
                  f"sha256 {result['sha256']}")
        return EXIT_OK

    return run_async(main())


def add_commands(sub: Any) -> None:
    p = sub.add_parser("send", help="send a file to a user through the running client")
    p.add_argument("name", metavar="NAME[#KEYPREFIX]",
                   help="the user; #KEYPREFIX (8 or more hex digits) selects its key")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--control", required=True, metavar="PATH",
                   help="the running client's control socket")
    p.add_argument("--json", action="store_true",
                   help='print {"path", "technique", "relay", "bytes", "seconds", "sha256", '
                        '"upgraded_from"}')
    p.add_argument("--wait", type=positive, default=ACCEPT_WAIT_S, metavar="S",
                   help="when the receiver keeps the invite as a contact request, wait this "
                        f"long for it to be accepted (default {ACCEPT_WAIT_S:g}, at most "
                        f"{MAX_ACCEPT_WAIT_S:g}); then exit {EXIT_NOT_ACCEPTED}")
    p.set_defaults(func=cmd_send)

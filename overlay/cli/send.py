"""``overlay send NAME FILE --control PATH [--json]``: have the running client send a file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from overlay.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, run_async
from overlay.client.control import ControlSocketError, control_request_async
from overlay.core.text import printable

SEND_TIMEOUT_S = 3600.0


async def _progress(control: Path, name: str, done: asyncio.Event) -> None:
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(f"connecting for {name}", total=None)
        while not done.is_set():
            try:
                status = await control_request_async(control, {"cmd": "status"}, timeout=2)
            except ControlSocketError:
                status = {}
            for item in status.get("sending") or []:
                if item.get("name") == name:
                    bar.update(task, description=f"{name} via {item.get('path')}",
                               completed=item.get("sent", 0), total=item.get("size") or None)
            try:
                async with asyncio.timeout(0.2):
                    await done.wait()
            except TimeoutError:
                pass


def cmd_send(args: argparse.Namespace) -> int:
    path = Path(args.file).resolve()
    if not path.is_file():
        print(f"overlay send: {args.file} is not a file", file=sys.stderr)
        return EXIT_USAGE
    control = Path(args.control)

    async def main() -> int:
        done = asyncio.Event()
        bar = None
        if not args.json and sys.stderr.isatty():
            bar = asyncio.create_task(_progress(control, path.name, done))
        try:
            reply: dict[str, Any] = await control_request_async(
                control, {"cmd": "send", "user": args.name, "path": str(path)},
                timeout=SEND_TIMEOUT_S)
        except ControlSocketError as exc:
            print(f"overlay send: the client is not reachable: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            done.set()
            if bar is not None:
                await bar
        if not reply.get("ok"):
            # the error may carry a peer's words (a refusal, a decline): escaped, never obeyed
            print(f"overlay send: {printable(str(reply.get('error', 'failed')))}",
                  file=sys.stderr)
            return EXIT_FAILURE
        result = {k: reply.get(k) for k in ("path", "relay", "bytes", "seconds", "sha256")}
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
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--control", required=True, metavar="PATH",
                   help="the running client's control socket")
    p.add_argument("--json", action="store_true",
                   help='print {"path", "relay", "bytes", "seconds", "sha256"}')
    p.set_defaults(func=cmd_send)

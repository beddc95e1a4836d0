"""``overlay client`` (the client daemon) and ``overlay client-ctl`` (talk to its socket)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from overlay.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    count,
    hostports,
    positive,
    run_async,
    size,
    user_name,
)
from overlay.client.control import ControlSocketError, control_request
from overlay.client.errors import ClientError
from overlay.client.options import ClientOptions, default_device
from overlay.core.records import RecordError
from overlay.media.inbox_limits import DEFAULT_MAX_FILES, InboxLimits


def cmd_client(args: argparse.Namespace) -> int:
    from overlay.client.daemon import ClientDaemon  # the heavy part (media, QUIC): here only

    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.key:
        key_path = Path(args.key)
    elif state_dir is not None:
        key_path = state_dir / "identity.key"
    else:
        print("overlay client: --key PATH is needed (or --state-dir, which keeps the key "
              "in STATE_DIR/identity.key)", file=sys.stderr)
        return EXIT_USAGE
    try:
        opts = ClientOptions(
            user=args.user, key_path=key_path, bootstrap=args.bootstrap or [],
            device=args.device or default_device(), state_dir=state_dir,
            control_path=Path(args.control) if args.control else None,
            inbox=Path(args.inbox) if args.inbox else None,
            may_become_supernode=not args.no_supernode, heartbeat_s=args.heartbeat,
            port_mapping=not args.no_port_mapping,
            presence_refresh_s=args.presence_refresh,
            promote_after_s=args.promote_after, listen_port=args.listen_port,
            accept_from=args.accept_from,
            inbox_limits=InboxLimits(max_bytes=args.inbox_quota,
                                     max_files=args.inbox_max_files),
        )
    except (ValueError, RecordError) as exc:
        print(f"overlay client: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> int:
        try:
            daemon = ClientDaemon(opts)
        except ClientError as exc:
            print(f"overlay client: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not opts.bootstrap and not len(daemon.cache):
            print("overlay client: no --bootstrap and no supernodes in the host cache "
                  f"({state_dir or 'no --state-dir'}); nothing to attach to", file=sys.stderr)
            return EXIT_USAGE
        try:
            await daemon.run_until_signalled()
        except ControlSocketError as exc:
            print(f"overlay client: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK

    return run_async(main())


def cmd_client_ctl(args: argparse.Namespace) -> int:
    request: dict[str, Any]
    if args.request == "status":
        request = {"cmd": "status"}
    elif args.request == "supernodes":
        request = {"cmd": "supernodes"}
    elif args.request == "lookup":
        if len(args.args) != 1:
            print("overlay client-ctl: lookup USER", file=sys.stderr)
            return EXIT_USAGE
        request = {"cmd": "lookup", "user": args.args[0]}
    else:  # raw
        if len(args.args) != 1:
            print("overlay client-ctl: raw '{\"cmd\": ...}'", file=sys.stderr)
            return EXIT_USAGE
        try:
            request = json.loads(args.args[0])
        except ValueError:
            print("overlay client-ctl: raw takes one JSON object", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(request, dict):
            print("overlay client-ctl: raw takes one JSON object", file=sys.stderr)
            return EXIT_USAGE
    try:
        answer = control_request(args.control, request, timeout=args.timeout)
    except ControlSocketError as exc:
        print(f"overlay client-ctl: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(answer, indent=2))
    return EXIT_OK if answer.get("ok") else EXIT_FAILURE


def add_commands(sub: Any) -> None:
    p = sub.add_parser("client", help="run a client: attach to the nearest supernode")
    p.add_argument("--user", type=user_name, required=True, metavar="NAME")
    p.add_argument("--key", metavar="PATH",
                   help="identity key file, created (0600) if missing "
                        "(default: STATE_DIR/identity.key)")
    p.add_argument("--bootstrap", type=hostports, metavar="HOST:PORT[,...]",
                   help="bootstrap nodes (not needed once the host cache knows supernodes)")
    p.add_argument("--device", type=user_name, metavar="NAME",
                   help="device name (default: derived from the host name)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="host cache and sequence numbers are kept here")
    p.add_argument("--control", metavar="PATH", help="Unix control socket (JSON lines)")
    p.add_argument("--inbox", metavar="DIR", help="delivered signals are written here")
    p.add_argument("--inbox-quota", type=size, default="1G", metavar="SIZE",
                   help="the inbox (received files, .partial files, signals) holds at most "
                        "this many bytes, e.g. 500M, 2G (default 1G = 1 GiB)")
    p.add_argument("--inbox-max-files", type=count, default=DEFAULT_MAX_FILES, metavar="N",
                   help=f"... and at most N files (default {DEFAULT_MAX_FILES})")
    p.add_argument("--no-supernode", action="store_true",
                   help="never offer to serve as a supernode")
    p.add_argument("--no-port-mapping", action="store_true",
                   help="never ask the router for port mappings (PCP, NAT-PMP)")
    p.add_argument("--heartbeat", type=positive, default=30.0, metavar="S",
                   help="heartbeat before the supernode announces its own (default 30)")
    p.add_argument("--presence-refresh", type=positive, default=300.0, metavar="S",
                   help="re-sign the presence record this often; lifetime 3x (default 300)")
    p.add_argument("--promote-after", type=positive, default=600.0, metavar="S",
                   help="uptime after which a publicly reachable client becomes a supernode")
    p.add_argument("--listen-port", type=int, default=0, metavar="PORT",
                   help="port (UDP and TCP) offered for the dial-back check and, once "
                        "promoted, for the supernode (default: any free port)")
    p.add_argument("--accept-from", choices=["contacts", "anyone"], default="contacts",
                   help="whose invites are answered at once: contacts (default; an invite "
                        "from anyone else is a request: no answer and no address of ours "
                        "until `overlay accept NAME`) or anyone")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("client-ctl", help="ask a running client over its control socket")
    p.add_argument("--control", required=True, metavar="PATH")
    p.add_argument("--timeout", type=positive, default=10.0, metavar="S")
    p.add_argument("request", choices=["status", "lookup", "supernodes", "raw"])
    p.add_argument("args", nargs="*")
    p.set_defaults(func=cmd_client_ctl)

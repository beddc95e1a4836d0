"""``overlay supernode``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overlay.cli.common import EXIT_OK, EXIT_USAGE, count, positive, rate, run_async, size
from overlay.cli.node import add_node_arguments, node_options
from overlay.core.units import parse_rate


def cmd_supernode(args: argparse.Namespace) -> int:
    # imported here: every `overlay` process builds the whole parser, and only this one runs
    # a supernode
    from overlay.attach import SessionConfig
    from overlay.node.supernode import Supernode, SupernodeOptions
    from overlay.node.tcp_service import ServiceLimits
    from overlay.relay.budget import BudgetConfig

    opts = node_options(args)
    host = args.listen[0]
    if host in ("0.0.0.0", "::") and args.advertise is None:
        print("overlay supernode: listening on all addresses needs --advertise IP:PORT "
              "(the public address clients and other nodes reach)", file=sys.stderr)
        return EXIT_USAGE
    opts.limits = ServiceLimits(
        session=SessionConfig(
            heartbeat_interval_s=args.heartbeat,
            handshake_timeout_s=args.handshake_timeout,
        ),
        max_connections=args.max_conns,
        max_connections_per_ip=args.max_conns_per_ip,
        max_connections_per_subnet=args.max_conns_per_subnet,
    )
    sn = SupernodeOptions(
        max_clients=args.max_clients,
        record_refresh_s=args.record_refresh,
        relay=BudgetConfig(
            total_bps=0 if args.no_relay else args.relay_budget,
            session_cap_bps=args.relay_session_cap,
            max_sessions=args.relay_max_sessions,
            max_session_bytes=args.relay_session_bytes,
            max_session_s=args.relay_session_time,
            max_sessions_per_ip=args.relay_max_sessions_per_ip,
            max_sessions_per_subnet=args.relay_max_sessions_per_subnet,
            max_sessions_per_key=args.relay_max_sessions_per_key,
            subnet_share=args.relay_subnet_share,
        ),
        relay_udp_port=args.relay_udp_port,
        relay_udp_fast_path=not args.no_relay_fast_path,
        relay_idle_timeout_s=args.relay_idle_timeout,
    )

    async def main() -> int:
        await Supernode(opts, sn).run_until_signalled()
        return EXIT_OK

    return run_async(main())


def share(text: str) -> float:
    """A fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("a share is in (0, 1]")
    return value


def add_commands(sub: Any) -> None:
    p = sub.add_parser("supernode", help="run a supernode")
    add_node_arguments(p, bootstrap_required=True)
    p.add_argument("--max-clients", type=int, default=10_000, metavar="N",
                   help="clients admitted before new ones are sent elsewhere")
    p.add_argument("--relay-budget", type=rate, default=parse_rate("2Mbit"),
                   metavar="RATE", help="total relay forwarding rate, e.g. 2Mbit")
    p.add_argument("--relay-session-cap", type=rate, default=0, metavar="RATE",
                   help="the most one relay session may use, both directions together "
                        "(default: a quarter of the budget, at least 1Mbit)")
    p.add_argument("--relay-max-sessions", type=int, default=32, metavar="N",
                   help="relay sessions at once (waiting ones count)")
    p.add_argument("--relay-session-bytes", type=size, default="64M", metavar="SIZE",
                   help="a relay session ends after this many bytes, both directions "
                        "(default 64M: an hour of a two-way 64 kbit/s call; a file transfer "
                        "resumes on a new session)")
    p.add_argument("--relay-session-time", type=positive, default=3600.0, metavar="S",
                   help="a relay session ends this long after pairing (default 3600)")
    p.add_argument("--relay-max-sessions-per-ip", type=count, default=8, metavar="N",
                   help="relay sessions one caller IP may hold (default 8)")
    p.add_argument("--relay-max-sessions-per-subnet", type=count, default=4, metavar="N",
                   help="relay sessions callers in one IPv4 /24 or IPv6 /48 may hold "
                        "(default 4)")
    p.add_argument("--relay-subnet-share", type=share, default=0.5, metavar="F",
                   help="the part of the relay budget the sessions from one /24 (/48) may "
                        "reserve together, 0..1 (default 0.5; never less than one session)")
    p.add_argument("--relay-max-sessions-per-key", type=count, default=4, metavar="N",
                   help="relay sessions one user key (voucher signer or reserving client) "
                        "may hold (default 4)")
    p.add_argument("--relay-udp-port", type=int, default=None, metavar="PORT",
                   help="also relay calls' datagrams on this UDP port of the listen address "
                        "(same budget and limits; advertised in the supernode's record, and "
                        "calls prefer it to the TCP relay; 0: any free port; default: off, "
                        "as it needs a second port opened beside the listen port)")
    p.add_argument("--no-relay-fast-path", action="store_true",
                   help="forward every call datagram in Python, not in the C fast path "
                        "(which is used when built: the log's relay_udp_started says)")
    p.add_argument("--relay-idle-timeout", type=positive, default=60.0, metavar="S",
                   help="end a relay session that forwards nothing for S seconds (default 60)")
    p.add_argument("--no-relay", action="store_true",
                   help="do not relay for others (relay connections are refused)")
    p.add_argument("--heartbeat", type=positive, default=30.0, metavar="S",
                   help="client heartbeat interval (dead after 3 missed)")
    p.add_argument("--handshake-timeout", type=positive, default=10.0, metavar="S")
    p.add_argument("--max-conns", type=int, default=20_000, metavar="N",
                   help="TCP connections at once (idle lookup-only ones are evicted first)")
    p.add_argument("--max-conns-per-ip", type=int, default=64, metavar="N")
    p.add_argument("--max-conns-per-subnet", type=int, default=256, metavar="N",
                   help="TCP connections from one IPv4 /24 or IPv6 /48")
    p.add_argument("--record-refresh", type=positive, default=60.0, metavar="S",
                   help="how often the supernode re-signs its record")
    p.set_defaults(func=cmd_supernode)

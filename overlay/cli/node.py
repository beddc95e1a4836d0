"""``overlay keygen`` and ``overlay bootstrap``, and the arguments every public node takes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlay.cli.common import EXIT_FAILURE, EXIT_OK, count, hostport, hostports, run_async
from overlay.core.identity import Identity

if TYPE_CHECKING:
    from overlay.node.daemon import NodeOptions


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists():
        print(f"overlay keygen: {path} already exists; refusing to overwrite it", file=sys.stderr)
        return EXIT_FAILURE
    from overlay.dht import DHTConfig

    # its node id solves the DHT's id puzzle, so the key may also serve a public node
    identity = Identity.generate_node(DHTConfig().id_puzzle_bits)
    identity.save(path)
    print(identity.public_id)
    return EXIT_OK


def node_options(args: argparse.Namespace) -> NodeOptions:
    # imported when a node runs, not to parse
    from overlay.dht import DirectoryLimits, StorageLimits
    from overlay.node.daemon import NodeOptions

    return NodeOptions(
        listen=args.listen,
        bootstrap=args.bootstrap or [],
        advertise=args.advertise,
        key_path=Path(args.key) if args.key else None,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        http=args.http,
        storage=StorageLimits(directory=DirectoryLimits(
            listed_per_network=args.directory_per_network,
            max_listed=args.directory_key_cap, max_waiting=args.directory_key_cap)),
    )


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from overlay.node.daemon import NodeDaemon

    async def main() -> int:
        await NodeDaemon(node_options(args)).run_until_signalled()
        return EXIT_OK

    return run_async(main())


def add_node_arguments(p: argparse.ArgumentParser, bootstrap_required: bool) -> None:
    p.add_argument("--listen", type=hostport, required=True, metavar="IP:PORT",
                   help="UDP (DHT) and TCP (clients) address to listen on")
    p.add_argument("--bootstrap", type=hostports, required=bootstrap_required,
                   metavar="HOST:PORT[,...]", help="nodes to join through")
    p.add_argument("--advertise", type=hostport, metavar="IP:PORT",
                   help="public address to announce (default: the listen address)")
    p.add_argument("--key", metavar="PATH", help="node key file (default: STATE_DIR/node.key)")
    p.add_argument("--state-dir", metavar="DIR", help="where the key and known peers are kept")
    p.add_argument("--http", type=hostport, metavar="IP:PORT",
                   help="serve /healthz, /readyz, /metrics and /v1/users/NAME here")
    p.add_argument("--directory-per-network", type=count, default=4, metavar="N",
                   help="supernodes of one IPv4 /24 or IPv6 /48 this node lists in the "
                        "directory it holds (default 4; tests on one loopback /24 raise it)")
    p.add_argument("--directory-key-cap", type=count, default=128, metavar="N",
                   help="supernode records this node lists under one directory (shard) key, "
                        "and as many waiting for a dial-back (default 128)")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("keygen", help="create an identity key file (mode 0600); its node id "
                       "solves the DHT's id puzzle, so it may serve a public node (~1 s)")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("bootstrap", help="run a bootstrap node")
    add_node_arguments(p, bootstrap_required=False)
    p.set_defaults(func=cmd_bootstrap)

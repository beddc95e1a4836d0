"""The ``overlay`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from overlay import logs
from overlay.addresses import AddressError, parse_hostport, parse_hostports
from overlay.identity import Identity, KeyFileError

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69

Handler = Callable[[argparse.Namespace], int]


def _hostport(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hostports(text: str) -> list[tuple[str, int]]:
    try:
        return parse_hostports(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_async(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:  # pragma: no cover - uvloop is a dependency; be graceful anyway
        return asyncio.run(main)


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists():
        print(f"overlay keygen: {path} already exists; refusing to overwrite it", file=sys.stderr)
        return 1
    identity = Identity.generate()
    identity.save(path)
    print(identity.public_id)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from overlay.demo import main as demo_main

    return demo_main()


def _node_options(args: argparse.Namespace) -> Any:
    from overlay.node_daemon import NodeOptions

    return NodeOptions(
        listen=args.listen,
        bootstrap=args.bootstrap or [],
        advertise=args.advertise,
        key_path=Path(args.key) if args.key else None,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        http=args.http,
    )


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from overlay.node_daemon import NodeDaemon

    async def main() -> int:
        await NodeDaemon(_node_options(args)).run_until_signalled()
        return 0

    return run_async(main())


def _add_node_arguments(p: argparse.ArgumentParser, bootstrap_required: bool) -> None:
    p.add_argument("--listen", type=_hostport, required=True, metavar="IP:PORT",
                   help="UDP (DHT) and TCP (clients) address to listen on")
    p.add_argument("--bootstrap", type=_hostports, required=bootstrap_required,
                   metavar="HOST:PORT[,...]", help="nodes to join through")
    p.add_argument("--advertise", type=_hostport, metavar="IP:PORT",
                   help="public address to announce (default: the listen address)")
    p.add_argument("--key", metavar="PATH", help="node key file (default: STATE_DIR/node.key)")
    p.add_argument("--state-dir", metavar="DIR", help="where the key and known peers are kept")
    p.add_argument("--http", type=_hostport, metavar="IP:PORT",
                   help="serve /healthz, /readyz, /metrics and /v1/users/NAME here")


def build_parser(extra: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlay", description=__doc__)
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument("--log-json", action="store_true", default=None,
                        help="JSON log lines (default when stderr is not a terminal)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="create an identity key file (mode 0600)")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("bootstrap", help="run a bootstrap node")
    _add_node_arguments(p, bootstrap_required=False)
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("demo", help="run a whole overlay on loopback and show it working")
    p.set_defaults(func=cmd_demo)

    for add in extra:
        add(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands contributed by other modules (kept out of this file's imports)."""
    found: list[Callable[[Any], None]] = []
    for module_name in ("overlay.supernode_cli", "overlay.client_cli", "overlay.send_cli"):
        try:
            module = __import__(module_name, fromlist=["add_commands"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        found.append(module.add_commands)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_extra_commands())
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_json)
    func: Handler = args.func
    try:
        return func(args)
    except KeyFileError as exc:
        print(f"overlay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

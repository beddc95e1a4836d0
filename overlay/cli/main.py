"""The ``overlay`` command: one parser, each subcommand's module adds its own."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from overlay.cli import call, client, contacts, demo, lookup, node, send, supernode
from overlay.cli.common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from overlay.core import logs
from overlay.core.identity import KeyFileError

Handler = Callable[[argparse.Namespace], int]

# In the order ``overlay --help`` lists them.
COMMAND_MODULES = (node, supernode, lookup, client, send, call, contacts, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlay", description="The ``overlay`` command.")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument("--log-json", action="store_true", default=None,
                        help="JSON log lines (default when stderr is not a terminal)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_json)
    func: Handler = args.func
    try:
        return func(args)
    except KeyFileError as exc:
        print(f"overlay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away: stop quietly, as Unix tools do (and keep the
        # interpreter's last flush from failing on the closed pipe too)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())

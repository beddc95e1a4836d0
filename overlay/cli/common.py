"""What every ``overlay`` subcommand shares: exit codes, argument types, running a coroutine."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Mapping
from typing import Any

from overlay.core.addresses import AddressError, parse_hostport, parse_hostports
from overlay.core.records import RecordError, check_name
from overlay.core.text import printable
from overlay.core.units import parse_rate, parse_size
from overlay.core.user_ref import UserRef, parse_user_ref

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_OFFLINE = 3
#: a name's records are signed by several keys and its holders' majority decides none
EXIT_CONFLICT = 4
#: ``overlay send``: the receiver kept the invite as a contact request and did not accept it
#: within ``--wait`` seconds, or declined it
EXIT_NOT_ACCEPTED = 5
EXIT_INTERRUPTED = 130
EXIT_UNAVAILABLE = 69
#: whoever read our output stopped reading (``overlay call --json | head``): 128 + SIGPIPE,
#: what a shell reports for a tool that SIGPIPE ended
EXIT_BROKEN_PIPE = 141


def refused(command: str, reply: Mapping[str, Any], codes: Mapping[str, int]) -> int:
    """Report a control reply with ``ok: false`` on stderr and return its exit code.

    The error may carry a peer's words (a refusal, a decline): it is printed escaped, never
    obeyed. ``codes`` maps the reply's ``reason`` to an exit code; any other reason is
    :data:`EXIT_FAILURE`."""
    print(f"overlay {command}: {printable(str(reply.get('error', 'failed')))}", file=sys.stderr)
    return codes.get(str(reply.get("reason")), EXIT_FAILURE)


def hostport(text: str) -> tuple[str, int]:
    """argparse type: ``HOST:PORT``."""
    try:
        return parse_hostport(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def hostports(text: str) -> list[tuple[str, int]]:
    """argparse type: ``HOST:PORT[,HOST:PORT...]``."""
    try:
        return parse_hostports(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def user_name(text: str) -> str:
    """argparse type: a valid user name."""
    try:
        return check_name(text)
    except RecordError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def user_ref(text: str) -> UserRef:
    """argparse type: ``NAME`` or ``NAME#KEYPREFIX`` (at least 8 hex digits)."""
    try:
        return parse_user_ref(text)
    except RecordError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rate(text: str) -> int:
    """argparse type: ``2Mbit``, ``500kbit``, ``1Gbit`` or plain bits per second."""
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size(text: str) -> int:
    """argparse type: ``1G``, ``500M``, ``64KiB`` or plain bytes (powers of 1024)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def run_async(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:  # pragma: no cover - uvloop is a dependency; be graceful anyway
        return asyncio.run(main)

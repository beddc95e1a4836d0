"""The schema layer of the attachment messages: tags, limits, strict field checks and the
:class:`Message` base every wire message derives from (the messages themselves are in
:mod:`overlay.attach.handshake_messages` and :mod:`overlay.attach.session_messages`; the
codec in :mod:`overlay.attach.messages`)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, Self

from overlay.attach.errors import MalformedMessage
from overlay.core.identity import PUBLIC_KEY_BYTES
from overlay.core.records import NAME_PATTERN

NONCE_BYTES = 16
MAX_TEXT_CHARS = 256
MAX_HOST_CHARS = 64
MAX_ALTERNATIVES = 16
MAX_LOOKUP_RECORDS = 32
MAX_SIGNAL_PAYLOAD_BYTES = 16 * 1024
U8 = 2**8 - 1
U16 = 2**16 - 1
U32 = 2**32 - 1
U64 = 2**64 - 1


class MessageType(IntEnum):
    """Stable wire tags. Never renumber; retire a tag rather than reuse it."""

    PROBE = 1
    PROBE_REPLY = 2
    CLIENT_HELLO = 3
    SERVER_HELLO = 4
    CLIENT_AUTH = 5
    ERROR = 6
    ATTACH = 16
    ATTACH_OK = 17
    REFUSED = 18
    MOVING = 19
    GOODBYE = 20
    PING = 21
    PONG = 22
    DETACH = 23
    LOOKUP_REQUEST = 32
    LOOKUP_RESPONSE = 33
    DIRECTORY_REQUEST = 34
    DIRECTORY_RESPONSE = 35
    REACHABILITY_REQUEST = 36
    REACHABILITY_RESULT = 37
    SIGNAL = 48
    SIGNAL_DELIVERY = 49
    SIGNAL_RESULT = 50
    RELAY_RESERVE = 52
    RELAY_RESERVED = 53


# --- field checks: each raises MalformedMessage unless the value fits exactly ----------------


def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise MalformedMessage(f"{name} must be an int in [{lo}, {hi}], not {value!r:.40}")


def check_bool(name: str, value: Any) -> None:
    if type(value) is not bool:
        raise MalformedMessage(f"{name} must be a bool, not {type(value).__name__}")


def check_float(name: str, value: Any) -> None:
    if type(value) is not float or not math.isfinite(value):
        raise MalformedMessage(f"{name} must be a finite float, not {value!r:.40}")


def check_bytes(name: str, value: Any, lo: int, hi: int) -> None:
    if type(value) is not bytes:
        raise MalformedMessage(f"{name} must be bytes, not {type(value).__name__}")
    if not lo <= len(value) <= hi:
        size = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise MalformedMessage(f"{name} must be {size} bytes, not {len(value)}")


def check_key(name: str, value: Any) -> None:
    check_bytes(name, value, PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES)


def check_text(name: str, value: Any, max_chars: int = MAX_TEXT_CHARS) -> None:
    if type(value) is not str:
        raise MalformedMessage(f"{name} must be a str, not {type(value).__name__}")
    if len(value) > max_chars or not value.isprintable():
        raise MalformedMessage(f"{name} must be printable text of at most {max_chars} chars")


def check_name(name: str, value: Any, allow_empty: bool = False) -> None:
    if type(value) is not str:
        raise MalformedMessage(f"{name} must be a str, not {type(value).__name__}")
    if allow_empty and value == "":
        return
    if not NAME_PATTERN.match(value):
        raise MalformedMessage(
            f"{name} {value!r:.70} must be 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )


def check_host(name: str, value: Any) -> None:
    check_text(name, value, MAX_HOST_CHARS)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise MalformedMessage(f"{name} {value!r} is not an IP address") from None


def check_port(name: str, value: Any) -> None:
    check_int(name, value, 1, 65535)


def tuple_of(name: str, value: Any, max_items: int) -> tuple[Any, ...]:
    if type(value) is list:
        value = tuple(value)
    if type(value) is not tuple or len(value) > max_items:
        raise MalformedMessage(f"{name} must be a list of at most {max_items} items")
    return value


# --- the base -----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Base of every wire message. Constructing an invalid message raises MalformedMessage."""

    TAG: ClassVar[MessageType]

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        raise NotImplementedError

    def _to_wire(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def _from_wire(cls, values: list[Any]) -> Self:
        return cls(*values)

    @classmethod
    def arity(cls) -> int:
        return len(fields(cls))

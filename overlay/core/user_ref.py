"""``NAME`` or ``NAME#KEYPREFIX``: a user name, optionally pinned to the key it must have.

The prefix is at least :data:`MIN_KEY_PREFIX` hex digits of the user's public key (64 digits in
all), compared in lower case. Wherever a user name is accepted (send, contacts), the prefix
selects one key when several claim the name, and refuses every other key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from overlay.core.records import MalformedRecord, RecordError, check_name

MIN_KEY_PREFIX = 8
MAX_KEY_PREFIX = 64
_HEX = re.compile(r"^[0-9a-f]+\Z")


@dataclass(frozen=True)
class UserRef:
    name: str
    #: lower-case hex, MIN_KEY_PREFIX..64 digits; None: any key
    key_prefix: str | None = None

    def matches(self, key: bytes) -> bool:
        return self.key_prefix is None or key.hex().startswith(self.key_prefix)

    def __str__(self) -> str:
        return self.name if self.key_prefix is None else f"{self.name}#{self.key_prefix}"


class BadUserRef(MalformedRecord):
    """Not ``NAME`` or ``NAME#KEYPREFIX``."""

    reason = "bad_user_ref"


def parse_user_ref(text: str) -> UserRef:
    """``NAME`` or ``NAME#KEYPREFIX``; raises :class:`BadUserRef` (a ``MalformedRecord``)."""
    name, sep, prefix = text.partition("#")
    try:
        check_name(name)
    except RecordError as exc:
        raise BadUserRef(str(exc)) from None
    if not sep:
        return UserRef(name)
    prefix = prefix.lower()
    if not MIN_KEY_PREFIX <= len(prefix) <= MAX_KEY_PREFIX or not _HEX.match(prefix):
        raise BadUserRef(
            f"{text[:80]!r}: the part after # is {MIN_KEY_PREFIX} to {MAX_KEY_PREFIX} hex "
            "digits of the user's public key")
    return UserRef(name, prefix)

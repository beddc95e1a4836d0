"""``NAME`` or ``NAME#KEYPREFIX``: how a user is named wherever a user name is accepted.

``NAME#KEYPREFIX`` (at least 8 hex digits of the user's public key) counts only the records
whose key starts with the prefix, so a conflict over ``NAME`` is resolved by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from overlay.core.identity import PUBLIC_KEY_BYTES
from overlay.core.records import RecordError, check_name

MIN_KEY_PREFIX_HEX = 8
_HEX = re.compile(r"^[0-9a-f]+$")


class BadUserRef(RecordError):
    """Not ``NAME`` or ``NAME#KEYPREFIX``."""

    reason = "bad_user_ref"


@dataclass(frozen=True)
class UserRef:
    name: str
    #: lowercase hex, at least 8 digits; None for a plain ``NAME``
    key_prefix: str | None = None

    def matches(self, key: bytes) -> bool:
        """Whether ``key`` is one this reference accepts."""
        return self.key_prefix is None or key.hex().startswith(self.key_prefix)

    def __str__(self) -> str:
        return self.name if self.key_prefix is None else f"{self.name}#{self.key_prefix}"


def parse_user_ref(text: str) -> UserRef:
    """``NAME`` or ``NAME#KEYPREFIX``; raises :class:`BadUserRef` (a ``RecordError``)."""
    name, sep, prefix = text.partition("#")
    try:
        check_name(name)
    except RecordError as exc:
        raise BadUserRef(str(exc)) from None
    if not sep:
        return UserRef(name)
    prefix = prefix.lower()
    if not _HEX.match(prefix) or not MIN_KEY_PREFIX_HEX <= len(prefix) <= 2 * PUBLIC_KEY_BYTES:
        raise BadUserRef(
            f"{text[:80]!r}: a key prefix after '#' is {MIN_KEY_PREFIX_HEX} to "
            f"{2 * PUBLIC_KEY_BYTES} hex digits"
        )
    return UserRef(name, prefix)

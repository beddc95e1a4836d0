"""Rates and sizes written as people write them."""

from __future__ import annotations

_RATE_UNITS = {"gbit": 10**9, "mbit": 10**6, "kbit": 10**3, "bit": 1}
_SIZE_UNITS = {"tib": 2**40, "gib": 2**30, "mib": 2**20, "kib": 2**10,
               "t": 2**40, "g": 2**30, "m": 2**20, "k": 2**10, "b": 1}


def _scaled(text: str, units: dict[str, int], example: str) -> float:
    """``text`` as a number with an optional unit suffix (the first of ``units`` it ends with),
    times that unit; raises ``ValueError`` naming ``example``."""
    lowered = text.strip().lower()
    unit = next((u for u in units if lowered.endswith(u)), "")
    number, factor = (lowered[: -len(unit)], units[unit]) if unit else (lowered, 1)
    try:
        return float(number) * factor
    except ValueError:
        raise ValueError(f"{text!r} is not {example}") from None


def parse_rate(text: str) -> int:
    """``2Mbit``, ``500kbit``, ``1Gbit`` or plain bits per second -> bits per second.

    Raises ``ValueError`` with a message meant for the user.
    """
    value = _scaled(text, _RATE_UNITS, "a rate like 2Mbit")
    if value < 0:
        raise ValueError("a rate cannot be negative")
    return int(value)


def parse_size(text: str) -> int:
    """``1G``, ``500M``, ``64KiB`` or plain bytes -> bytes (K, M, G, T are powers of 1024).

    Raises ``ValueError`` with a message meant for the user.
    """
    value = _scaled(text, _SIZE_UNITS, "a size like 1G or 500M")
    if not 0 <= value < 2**63:
        raise ValueError(f"{text!r} is not a size from 0 to 8 EiB")
    return int(value)

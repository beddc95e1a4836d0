"""Rates written as people write them."""

from __future__ import annotations

_RATE_UNITS = {"gbit": 10**9, "mbit": 10**6, "kbit": 10**3, "bit": 1}


def parse_rate(text: str) -> int:
    """``2Mbit``, ``500kbit``, ``1Gbit`` or plain bits per second -> bits per second.

    Raises ``ValueError`` with a message meant for the user.
    """
    lowered = text.strip().lower()
    unit = next((u for u in _RATE_UNITS if lowered.endswith(u)), "")
    number, factor = (lowered[: -len(unit)], _RATE_UNITS[unit]) if unit else (lowered, 1)
    try:
        value = float(number) * factor
    except ValueError:
        raise ValueError(f"{text!r} is not a rate like 2Mbit") from None
    if value < 0:
        raise ValueError("a rate cannot be negative")
    return int(value)

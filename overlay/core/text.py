"""Peer-supplied text made safe to print: control characters escaped, never interpreted."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with every non-printable character (C0/C1 controls such as ESC, DEL, line
    breaks, bidirectional overrides) written as its Python escape (``\\x1b``, ``\\u202e``), so a
    terminal shows it instead of obeying it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)

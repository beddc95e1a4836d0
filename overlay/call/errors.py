"""The call layer's errors."""

from __future__ import annotations

from overlay.core.errors import OverlayError


class CallError(OverlayError):
    """Something the call layer detected and refused or could not do."""


class BadFrame(CallError):
    """A media datagram refused; ``reason`` says why in one word or two."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason

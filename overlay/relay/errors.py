"""The root of the relay layer's errors: every deliberate relay exception derives from it."""

from __future__ import annotations

from overlay.core.errors import OverlayError


class RelayError(OverlayError):
    """The relay refused, or a relay exchange failed."""

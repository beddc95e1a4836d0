"""The root of the DHT layer's errors: every deliberate DHT exception derives from it."""

from __future__ import annotations

from overlay.core.errors import OverlayError


class DHTError(OverlayError):
    """The DHT dropped a datagram or could not do what it was asked."""

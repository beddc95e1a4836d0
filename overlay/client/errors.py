"""The client layer's root error: every error class of :mod:`overlay.client` derives from it."""

from __future__ import annotations

from overlay.core.errors import OverlayError


class ClientError(OverlayError):
    """The client daemon, its control socket or its state refused or could not do something."""

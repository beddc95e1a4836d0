"""The node layer's errors: every deliberate exception of :mod:`overlay.node` is a
:class:`NodeError`."""

from __future__ import annotations

from overlay.core.errors import OverlayError


class NodeError(OverlayError):
    """A public node (bootstrap node or supernode) refused or could not do something."""


class BadSignal(NodeError, ValueError):
    """A forwarded signal (DHT method ``signal``) that does not fit its schema; a
    ``ValueError`` too, so the DHT answers it with ``{"error": ...}``."""

"""The root of every error the overlay raises on purpose.

Each layer has one subclass of :class:`OverlayError` (``RecordError``, ``DHTError``,
``AttachError``, ``RelayError``, ``MediaError`` with ``PathLost``, ``NodeError``,
``ClientError``), and every error class of that layer derives from it, so a caller can catch
a whole layer, or everything, without listing classes. Errors that also have a standard
meaning keep it as a second base (``class Timeout(MediaError, TimeoutError)``).
"""

from __future__ import annotations


class OverlayError(Exception):
    """Something the overlay detected and refused or could not do; the message says what."""

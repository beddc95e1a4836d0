"""The media layer's errors: :class:`MediaError` is the root of every one of them, and
:class:`PathLost` of every way a media path fails.

A lost path is met the same way wherever it happens (the peer's end closed, a socket or relay
connection failed, the secured stream broke, punching or QUIC failed): the caller tries or
resumes on another path. ``PathLost`` is also a ``ConnectionError``, so code that catches
connection errors keeps catching it. The stream adapters turn the ``ConnectionError`` of a
socket under them into ``PathLost`` (same message), so ``except PathLost`` sees them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from overlay.core.errors import OverlayError

#: why a callee's relay attempt not paired yet stops: the caller holds its one spare relay
#: session already, so it makes no more (:mod:`overlay.media.late_paths`)
PEER_HOLDS_SPARE = "the caller holds its spare relay session"


class MediaError(OverlayError):
    """Something the media layer detected and refused or could not do."""


class PathLost(MediaError, ConnectionError):
    """A media path failed or went away; another path may take over."""


@contextlib.contextmanager
def losing_path() -> Iterator[None]:
    """Inside, a ``ConnectionError`` (a socket's or relay connection's) comes out as a
    :class:`PathLost` with the same text; a ``PathLost`` passes unchanged."""
    try:
        yield
    except PathLost:
        raise
    except ConnectionError as exc:
        raise PathLost(str(exc) or type(exc).__name__) from exc

"""What the initiator of a path race sends first on a path, and how the responder reads it
(sans-IO: bytes in, a :class:`Selection` out).

``SELECT`` (8 bytes) makes the path the one in use (:mod:`overlay.media.connect`); ``MIRROR``
(8 bytes) makes it a call's mirror: a second path that carries a copy of every frame both
ways while the path in use is a TCP stream (:mod:`overlay.call.stream_io`). Before
it, on a call's spare path (completed, held unselected for a fail-over), the initiator sends
``KEEPALIVE`` (8 bytes) every :data:`SPARE_KEEPALIVE_S`: the path's end-to-end encrypted
stream then carries bytes, so a relay does not end the spare session as idle (60 s without
traffic) and a NAT keeps its mapping. The responder drops keepalives before ``SELECT``; the
initiator sends none once it sent ``SELECT`` on that path. Anything else first (or the
stream's end) means the path is not selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SELECT = b"\x00SELECT\x00"
KEEPALIVE = b"\x00ALIVE\x00\x00"
MIRROR = b"\x00MIRROR\x00"
MARK_BYTES = len(SELECT)
assert len(KEEPALIVE) == len(MIRROR) == MARK_BYTES
#: how often the initiator sends ``KEEPALIVE`` on each spare path: well under the relay's
#: idle limit (``overlay supernode --relay-idle-timeout``, 60 s) and common NAT timeouts
SPARE_KEEPALIVE_S = 15.0


@dataclass(frozen=True)
class Selection:
    """``more``: read on (``rest`` is the start of a mark, < 8 bytes); ``selected`` /
    ``mirrored``: ``rest`` is what followed ``SELECT`` / ``MIRROR`` (the path's first data);
    ``other``: not selected."""

    state: Literal["more", "selected", "mirrored", "other"]
    rest: bytes = b""


def read_selection(data: bytes) -> Selection:
    """The responder's reading of what arrived first on a path (keepalives dropped)."""
    while data[:MARK_BYTES] == KEEPALIVE:
        data = data[MARK_BYTES:]
    if len(data) < MARK_BYTES:
        prefix_of_mark = any(m.startswith(data) for m in (SELECT, KEEPALIVE, MIRROR))
        return Selection("more", data) if prefix_of_mark else Selection("other")
    if data[:MARK_BYTES] == SELECT:
        return Selection("selected", data[MARK_BYTES:])
    if data[:MARK_BYTES] == MIRROR:
        return Selection("mirrored", data[MARK_BYTES:])
    return Selection("other")

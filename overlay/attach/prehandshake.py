"""Small buffers until the handshake is done (sans-IO).

Every message a peer may send before the handshake (``Probe``, ``ClientHello``,
``ClientAuth``, ``ServerHello``, ``ProbeReply``, ``Error``) fits in
:data:`PRE_HANDSHAKE_MAX_FRAME_BYTES` (the largest, an ``Error`` with 256 characters of
text, is about 1 KiB). :class:`PreHandshakeGate` cuts the bytes a peer sends at frame
boundaries, so its owner can feed the session one frame at a time and stop gating the moment
the handshake completes, and refuses at its length prefix any frame larger than that: a
connection that has not authenticated holds at most ``4 + PRE_HANDSHAKE_MAX_FRAME_BYTES``
bytes, not a 64 KiB frame.
"""

from __future__ import annotations

from collections.abc import Iterator

from overlay.attach.errors import FrameTooLarge, PreHandshakeFrameTooLarge
from overlay.attach.frames import LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES, encode_frame
from overlay.attach.messages import MAX_TEXT_CHARS, Error, encode

PRE_HANDSHAKE_MAX_FRAME_BYTES = 2048


class PreHandshakeGate:
    """Splits pre-handshake input into whole frames (the last piece may be partial)."""

    def __init__(self, max_frame_bytes: int = PRE_HANDSHAKE_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._prefix = bytearray()
        self._body_left = 0
        #: bytes of the frame in progress (prefix and body so far): what the peer has made
        #: the session buffer
        self.held = 0

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """``data`` cut after each complete frame, lazily: stop iterating when the handshake
        completes and hand the rest on unsplit. At an oversized prefix, after yielding the
        frames before it, raises :class:`FrameTooLarge` (over any frame's cap) or
        :class:`PreHandshakeFrameTooLarge` (a frame only a sealed message may fill)."""
        start = pos = 0
        end = len(data)
        while pos < end:
            if self._body_left == 0:
                take = min(LENGTH_PREFIX_BYTES - len(self._prefix), end - pos)
                self._prefix += data[pos:pos + take]
                pos += take
                self.held += take
                if len(self._prefix) < LENGTH_PREFIX_BYTES:
                    break
                length = int.from_bytes(self._prefix, "big")
                if length > MAX_FRAME_BYTES:
                    raise FrameTooLarge(length, MAX_FRAME_BYTES)
                if length > self.max_frame_bytes:
                    raise PreHandshakeFrameTooLarge(length, self.max_frame_bytes)
                self._body_left = length
            take = min(self._body_left, end - pos)
            pos += take
            self._body_left -= take
            self.held += take
            if self._body_left == 0:  # a whole frame
                self._prefix.clear()
                self.held = 0
                yield data[start:pos]
                start = pos
        if start < end:
            yield data[start:]


def error_frame(exc: FrameTooLarge) -> bytes:
    """The plaintext ``Error`` frame that tells the peer why it is cut off."""
    return encode_frame(encode(Error(int(exc.code), str(exc)[:MAX_TEXT_CHARS])))

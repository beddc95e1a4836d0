"""Call frames over a byte stream (sans-IO): the last-resort path, a relay over TCP.

A byte stream delivers everything in order, so a frame delayed behind a lost segment holds
up every later one (head-of-line blocking), and anything queued for a slow path only grows
older. So the sender drops instead of queueing: :class:`SendGate` lets a frame out only
while what the stream has not yet written stays under :data:`MAX_BACKLOG_FRAMES` frames (60
ms of audio); a dropped frame is a lost frame (:meth:`CallSession.sender_dropped`), its
slot concealed by the receiver's jitter buffer like any other loss.

Wire: ``length(2, big endian) | frame`` per frame, the frame exactly as on UDP
(:mod:`overlay.call.frames`, still end-to-end encrypted and replay-checked). The decoder
refuses a length outside :data:`~overlay.call.frames.MIN_DATAGRAM_BYTES` ..
:data:`~overlay.call.frames.MAX_DATAGRAM_BYTES` before buffering it, and never holds more
than one frame's bytes.
"""

from __future__ import annotations

import struct

from overlay.call.errors import BadFrame
from overlay.call.frames import MAX_DATAGRAM_BYTES, MIN_DATAGRAM_BYTES

_LENGTH = struct.Struct(">H")
#: frames a sender lets wait in the stream's buffer before it drops new ones
MAX_BACKLOG_FRAMES = 3


def encode_stream_frame(frame: bytes) -> bytes:
    if not MIN_DATAGRAM_BYTES <= len(frame) <= MAX_DATAGRAM_BYTES:
        raise BadFrame("size", f"{len(frame)} bytes")
    return _LENGTH.pack(len(frame)) + frame


class StreamFrameDecoder:
    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole frames ``data`` completes; :class:`BadFrame` on a bad length (the
        stream is then unusable)."""
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            if len(self._buf) < _LENGTH.size:
                take = _LENGTH.size - len(self._buf)
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < _LENGTH.size:
                    break
                (length,) = _LENGTH.unpack(self._buf)
                if not MIN_DATAGRAM_BYTES <= length <= MAX_DATAGRAM_BYTES:
                    raise BadFrame("size", f"a stream frame of {length} bytes")
            (length,) = _LENGTH.unpack_from(self._buf)
            need = _LENGTH.size + length - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == _LENGTH.size + length:
                out.append(bytes(self._buf[_LENGTH.size:]))
                self._buf.clear()
        return out


class SendGate:
    """Whether a frame may go out on a stream whose unsent backlog is ``buffered`` bytes."""

    def __init__(self, frame_bytes: int, max_backlog_frames: int = MAX_BACKLOG_FRAMES) -> None:
        self.limit = max_backlog_frames * (frame_bytes + _LENGTH.size)
        self.sent = 0
        self.dropped = 0

    def admit(self, buffered: int) -> bool:
        if buffered > self.limit:
            self.dropped += 1
            return False
        self.sent += 1
        return True

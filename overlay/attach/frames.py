"""Length-prefixed framing.

A frame is a 4-byte big-endian unsigned body length followed by the body. Before the
handshake a body is a plaintext msgpack message (``Probe``, ``ProbeReply``, ``ClientHello``,
``ServerHello``, ``ClientAuth``, ``Error``); after it, every body is a ChaCha20-Poly1305
ciphertext of a message (see :mod:`overlay.attach.channel`).

The length is checked against the decoder's cap as soon as the 4 prefix bytes are in, so a
hostile prefix costs nothing: no body is buffered. Between calls the decoder holds at most
one partial frame (``4 + max_frame_bytes`` bytes at worst).
"""

from __future__ import annotations

from overlay.attach.errors import FrameError, FrameTooLarge

LENGTH_PREFIX_BYTES = 4
#: Default cap on a frame body (not counting the prefix).
MAX_FRAME_BYTES = 64 * 1024
_PREFIX_LIMIT = 2**32 - 1


def encode_frame(body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Prefix ``body`` with its length; refuse a body the peer's decoder would refuse."""
    if len(body) > max_frame_bytes:
        raise FrameTooLarge(len(body), max_frame_bytes)
    return len(body).to_bytes(LENGTH_PREFIX_BYTES, "big") + body


class FrameDecoder:
    """Incremental frame decoder: ``feed`` bytes as they arrive, get whole bodies back.

    A :class:`FrameTooLarge` leaves the decoder failed: every later ``feed`` raises
    :class:`FrameError`, because the stream position is lost.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if not 0 <= max_frame_bytes <= _PREFIX_LIMIT:
            raise ValueError("max_frame_bytes must fit the 4-byte length prefix")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._body_len: int | None = None  # None while reading a prefix
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress (prefix or body)."""
        return len(self._buf)

    @property
    def failed(self) -> bool:
        return self._failed

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the bodies of every frame it completed, in order."""
        if self._failed:
            raise FrameError("frame decoder failed earlier; the stream cannot be resumed")
        frames: list[bytes] = []
        view = memoryview(data)
        pos = 0
        buf = self._buf
        while True:
            if self._body_len is None:
                take = view[pos : pos + LENGTH_PREFIX_BYTES - len(buf)]
                buf += take
                pos += len(take)
                if len(buf) < LENGTH_PREFIX_BYTES:
                    break
                length = int.from_bytes(buf, "big")
                buf.clear()
                if length > self.max_frame_bytes:
                    self._failed = True
                    raise FrameTooLarge(length, self.max_frame_bytes, frames)
                self._body_len = length
            need = self._body_len - len(buf)
            if not buf and len(view) - pos >= need:
                # Fast path: the whole body is in ``data``; no copy into the buffer.
                frames.append(bytes(view[pos : pos + need]))
                pos += need
            else:
                take = view[pos : pos + need]
                buf += take
                pos += len(take)
                if len(buf) < self._body_len:
                    break
                frames.append(bytes(buf))
                buf.clear()
            self._body_len = None
        return frames

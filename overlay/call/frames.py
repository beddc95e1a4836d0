"""The call media datagram (sans-IO): end-to-end encrypted, sequenced, replay-protected.

Wire format (all integers big endian), one frame per UDP datagram (or per relayed datagram)::

    frame = magic 0x8C 0x43(2) | version(1) = 1 | direction(1) | call_id(8) | seq(8)
            | sent_ms(4) | ciphertext
    ciphertext = ChaCha20-Poly1305-IETF(key[direction], nonce = direction(4) | seq(8),
                                        aad = the 24-byte header, plaintext = payload)

The first byte, 0x8C, has QUIC v1's fixed bit (0x40) clear and is not STUN's (0-3), so a
socket that also carries QUIC (a punched media socket) tells a frame apart by its first byte
(RFC 9000 17; RFC 9443 demultiplexing). ``direction`` is 0 for frames from the caller, 1
for frames from the callee. ``call_id`` is 8 random bytes the caller draws for each call
(:func:`new_call_id`) and sends inside the signed invite; ``seq`` counts the sender's frames
from 0 and is never reused within a call (a path change continues it); ``sent_ms`` is the
sender's clock in milliseconds modulo 2**32 (one-way delay and RFC 3550 jitter are computed
from it).

Keys: ``key[d] = BLAKE2b-256(call_id, key = the call's 32-byte shared secret,
person = "ovl-call-c2e" or "ovl-call-e2c")``. Each direction has its own key and its own
nonce prefix, and the nonce is the sequence number, so a (key, nonce) pair is never used
twice as long as ``call_id`` is fresh for the secret. A frame reflected to its sender
carries the sender's own direction and is refused; with the direction byte flipped it fails
authentication.

Receiving is strict and cheap first: size (:data:`MIN_DATAGRAM_BYTES` to
:data:`MAX_DATAGRAM_BYTES`), magic, version, direction, call id, then the replay window
(:class:`ReplayWindow`, RFC 6479, :data:`REPLAY_WINDOW` = 2048 frames), then authentication;
only an authenticated frame moves the window.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from overlay.call.errors import BadFrame

MAGIC = b"\x8cC"
VERSION = 1
FROM_CALLER = 0
FROM_CALLEE = 1
CALL_ID_BYTES = 8
SECRET_BYTES = 32
TAG_BYTES = 16
_HEADER = struct.Struct(">2sBB8sQI")
HEADER_BYTES = _HEADER.size  # 24
MIN_DATAGRAM_BYTES = HEADER_BYTES + TAG_BYTES
#: the largest frame sent or taken (fits an IPv6 minimum MTU with room for a relay)
MAX_DATAGRAM_BYTES = 1200
MAX_PAYLOAD_BYTES = MAX_DATAGRAM_BYTES - MIN_DATAGRAM_BYTES
#: sequence numbers the replay filter remembers behind the highest one seen
REPLAY_WINDOW = 2048
MAX_SEQ = 2**64 - 2
_PERSONS = (b"ovl-call-c2e", b"ovl-call-e2c")


def new_call_id() -> bytes:
    return os.urandom(CALL_ID_BYTES)


@dataclass(frozen=True)
class CallKeys:
    """One key per direction: ``keys[FROM_CALLER]``, ``keys[FROM_CALLEE]``."""

    from_caller: bytes
    from_callee: bytes

    def for_direction(self, direction: int) -> bytes:
        return self.from_caller if direction == FROM_CALLER else self.from_callee


def call_keys(shared_secret: bytes, call_id: bytes) -> CallKeys:
    if len(shared_secret) != SECRET_BYTES or not any(shared_secret):
        raise ValueError("the call's shared secret is 32 non-zero bytes")
    if len(call_id) != CALL_ID_BYTES:
        raise ValueError(f"a call id is {CALL_ID_BYTES} bytes")
    keys = [hashlib.blake2b(call_id, key=shared_secret, digest_size=32, person=p).digest()
            for p in _PERSONS]
    return CallKeys(keys[0], keys[1])


@dataclass(frozen=True)
class MediaFrame:
    """One opened frame."""

    call_id: bytes
    direction: int
    seq: int
    sent_ms: int
    payload: bytes


def _nonce(direction: int, seq: int) -> bytes:
    return direction.to_bytes(4, "big") + seq.to_bytes(8, "big")


class ReplayWindow:
    """The sliding-window replay filter of RFC 6479 / IPsec / WireGuard: the highest sequence
    number seen and a bitmap of the :data:`REPLAY_WINDOW` before it."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.top = -1
        self._bits = 0  # bit i: top - i was seen

    def fresh(self, seq: int) -> bool:
        """Whether ``seq`` may be taken (neither seen nor older than the window)."""
        if seq > self.top:
            return True
        behind = self.top - seq
        return behind < self.size and not (self._bits >> behind) & 1

    def mark(self, seq: int) -> None:
        """Record ``seq`` (only after it authenticated, and only if :meth:`fresh`)."""
        if seq > self.top:
            shift = seq - self.top
            kept = (self._bits << shift) & ((1 << self.size) - 1) if shift < self.size else 0
            self._bits = kept | 1
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)


class FrameSealer:
    """The sending side of one direction of a call."""

    def __init__(self, keys: CallKeys, call_id: bytes, *, caller: bool) -> None:
        self.call_id = call_id
        self.direction = FROM_CALLER if caller else FROM_CALLEE
        self._key = keys.for_direction(self.direction)
        self.next_seq = 0

    def seal(self, sent_ms: int, payload: bytes) -> bytes:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise BadFrame("too large", f"{len(payload)} > {MAX_PAYLOAD_BYTES} bytes")
        seq = self.next_seq
        if seq > MAX_SEQ:
            raise BadFrame("sequence exhausted")
        self.next_seq = seq + 1
        header = _HEADER.pack(MAGIC, VERSION, self.direction, self.call_id, seq,
                              sent_ms % 2**32)
        return header + crypto_aead_chacha20poly1305_ietf_encrypt(
            payload, header, _nonce(self.direction, seq), self._key)


class FrameOpener:
    """The receiving side: frames of the peer's direction of this call, each once."""

    def __init__(self, keys: CallKeys, call_id: bytes, *, caller: bool) -> None:
        self.call_id = call_id
        #: the direction this side receives (the peer's)
        self.direction = FROM_CALLEE if caller else FROM_CALLER
        self._key = keys.for_direction(self.direction)
        self.window = ReplayWindow()
        self.opened = 0

    def open(self, datagram: bytes) -> MediaFrame:
        """The frame in ``datagram``, or :class:`BadFrame` (nothing changes then)."""
        if not MIN_DATAGRAM_BYTES <= len(datagram) <= MAX_DATAGRAM_BYTES:
            raise BadFrame("size", f"{len(datagram)} bytes")
        magic, version, direction, call_id, seq, sent_ms = _HEADER.unpack_from(datagram)
        if magic != MAGIC or version != VERSION:
            raise BadFrame("not a call frame")
        if direction != self.direction:
            raise BadFrame("direction", f"{direction}")
        if call_id != self.call_id:
            raise BadFrame("another call")
        if seq > MAX_SEQ or not self.window.fresh(seq):
            raise BadFrame("replay", f"seq {seq}")
        header = datagram[:HEADER_BYTES]
        try:
            payload = crypto_aead_chacha20poly1305_ietf_decrypt(
                datagram[HEADER_BYTES:], header, _nonce(direction, seq), self._key)
        except CryptoError:
            raise BadFrame("authentication") from None
        self.window.mark(seq)
        self.opened += 1
        return MediaFrame(call_id, direction, seq, sent_ms, payload)

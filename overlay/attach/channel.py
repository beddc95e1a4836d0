"""The secure channel every frame travels in once the handshake is complete.

Each frame body is ``ChaCha20-Poly1305-IETF(key, nonce, plaintext=message body,
aad=CHANNEL_AAD)``, with one key per direction from the handshake and the 96-bit nonce
``0x00000000 || counter`` (64-bit big-endian), where the counter counts the frames already
sent in that direction. The nonce is implicit, never sent: a frame that is replayed,
reordered, dropped before, truncated or altered is opened under the wrong nonce or fails
its tag, and raises :class:`DecryptError`; the channel then refuses everything after it.

Sealed messages: ``Attach``, ``AttachOk``, ``Refused``, ``Moving``, ``Goodbye``, ``Ping``,
``Pong``, ``LookupRequest``, ``LookupResponse``, ``Signal``, ``SignalDelivery``,
``SignalResult``, ``Error``. Handshake and probe messages inside the channel are refused.
"""

from __future__ import annotations

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_ABYTES,
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from overlay.attach.errors import (
    ChannelError,
    DecryptError,
    FrameTooLarge,
    UnexpectedMessage,
)
from overlay.attach.frames import MAX_FRAME_BYTES, encode_frame
from overlay.attach.handshake import SESSION_KEY_BYTES, HandshakeResult
from overlay.attach.messages import SEALED_TYPES, Message, decode, encode

CHANNEL_AAD = b"overlay/channel/v1"
TAG_BYTES: int = crypto_aead_chacha20poly1305_ietf_ABYTES
_MAX_COUNTER = 2**64 - 1


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


class SecureChannel:
    """Seals outgoing and opens incoming messages for one established session."""

    def __init__(
        self, send_key: bytes, recv_key: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES
    ) -> None:
        if len(send_key) != SESSION_KEY_BYTES or len(recv_key) != SESSION_KEY_BYTES:
            raise ValueError("session keys are 32 bytes")
        if send_key == recv_key:
            raise ValueError("the two directions must use different keys")
        self._send_key = send_key
        self._recv_key = recv_key
        self.max_frame_bytes = max_frame_bytes
        self._send_counter = 0
        self._recv_counter = 0
        self._failed = False

    @classmethod
    def from_handshake(
        cls, result: HandshakeResult, *, max_frame_bytes: int = MAX_FRAME_BYTES
    ) -> SecureChannel:
        return cls(result.send_key, result.recv_key, max_frame_bytes=max_frame_bytes)

    @property
    def sent(self) -> int:
        """Frames sealed so far (the next send nonce)."""
        return self._send_counter

    @property
    def received(self) -> int:
        """Frames opened so far (the next receive nonce)."""
        return self._recv_counter

    @property
    def failed(self) -> bool:
        return self._failed

    def seal_body(self, msg: Message) -> bytes:
        """Encrypt ``msg`` into a frame body (without the length prefix)."""
        if type(msg) not in SEALED_TYPES:
            raise ValueError(f"{type(msg).__name__} does not travel in the secure channel")
        plaintext = encode(msg)
        if len(plaintext) + TAG_BYTES > self.max_frame_bytes:
            raise FrameTooLarge(len(plaintext) + TAG_BYTES, self.max_frame_bytes)
        if self._send_counter >= _MAX_COUNTER:
            raise ChannelError("send nonce counter exhausted; reconnect")
        body: bytes = crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, CHANNEL_AAD, _nonce(self._send_counter), self._send_key
        )
        self._send_counter += 1
        return body

    def seal(self, msg: Message) -> bytes:
        """Encrypt ``msg`` into a complete frame, ready to write."""
        return encode_frame(self.seal_body(msg), self.max_frame_bytes)

    def open(self, body: bytes) -> Message:
        """Authenticate and decrypt one frame body, then decode it strictly."""
        if self._failed:
            raise DecryptError("the channel failed earlier; nothing more can be opened")
        if self._recv_counter >= _MAX_COUNTER:
            self._failed = True
            raise ChannelError("receive nonce counter exhausted")
        if len(body) < TAG_BYTES:
            self._failed = True
            raise DecryptError(f"frame of {len(body)} bytes is shorter than its tag")
        try:
            plaintext: bytes = crypto_aead_chacha20poly1305_ietf_decrypt(
                bytes(body), CHANNEL_AAD, _nonce(self._recv_counter), self._recv_key
            )
        except CryptoError:
            self._failed = True
            raise DecryptError(
                f"frame #{self._recv_counter} failed authentication "
                "(tampered, truncated, replayed, reordered or not encrypted)"
            ) from None
        self._recv_counter += 1
        msg = decode(plaintext)
        if type(msg) not in SEALED_TYPES:
            raise UnexpectedMessage(f"{type(msg).__name__} is not allowed in the secure channel")
        return msg

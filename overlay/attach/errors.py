"""Typed errors of the attachment protocol, all under :class:`AttachError`.

Every error a peer can provoke is a :class:`ProtocolError` subclass with a short stable
``reason`` label (for metrics and logs) and the :class:`ErrorCode` sent to the peer in an
``Error`` message when the session closes because of it. Misuse of the API by local code
(sending before the handshake, sending after close) raises :class:`InvalidState` instead,
which is not a protocol error. The asyncio adapter's ``SessionError`` is an
:class:`AttachError` too.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from overlay.core.errors import OverlayError


class ErrorCode(IntEnum):
    """Codes carried by the ``Error`` message. Unknown codes (0..65535) are accepted."""

    PROTOCOL = 1
    MALFORMED = 2
    FRAME_TOO_LARGE = 3
    HANDSHAKE_FAILED = 4
    UNSUPPORTED_VERSION = 5
    DECRYPT_FAILED = 6
    TIMEOUT = 7
    UNEXPECTED_MESSAGE = 8
    INTERNAL = 9


class AttachError(OverlayError):
    """The root of the attachment layer's errors."""


class ProtocolError(AttachError):
    """The peer (or the bytes claiming to be from it) broke the protocol."""

    reason: ClassVar[str] = "protocol_error"
    code: ClassVar[ErrorCode] = ErrorCode.PROTOCOL


class FrameError(ProtocolError):
    reason = "bad_frame"
    code = ErrorCode.PROTOCOL


class FrameTooLarge(FrameError):
    """A length prefix announced a frame above the cap; raised before buffering its body.

    ``complete_frames`` holds the frames that were complete in the same input before the
    offending prefix, so a caller can still act on them.
    """

    reason = "frame_too_large"
    code = ErrorCode.FRAME_TOO_LARGE

    def __init__(self, length: int, limit: int, complete_frames: list[bytes] | None = None):
        super().__init__(
            f"frame of {length} bytes exceeds the {limit}-byte limit "
            "(is the peer speaking the overlay protocol?)"
        )
        self.length = length
        self.limit = limit
        self.complete_frames: list[bytes] = complete_frames or []


class PreHandshakeFrameTooLarge(FrameTooLarge):
    """Before the handshake, a length prefix announced more than any handshake message needs
    (:mod:`overlay.attach.prehandshake`)."""

    reason = "pre_handshake_frame_too_large"


class MalformedMessage(ProtocolError):
    """A message body does not match its schema exactly."""

    reason = "malformed_message"
    code = ErrorCode.MALFORMED


class UnknownMessageType(MalformedMessage):
    reason = "unknown_message_type"


class UnexpectedMessage(ProtocolError):
    """A well-formed message that is not allowed in this state or direction."""

    reason = "unexpected_message"
    code = ErrorCode.UNEXPECTED_MESSAGE


class HandshakeError(ProtocolError):
    reason = "handshake_failed"
    code = ErrorCode.HANDSHAKE_FAILED


class MalformedHandshake(HandshakeError):
    reason = "malformed_handshake"


class UnexpectedHandshakeMessage(HandshakeError):
    reason = "unexpected_handshake_message"


class UnsupportedVersion(HandshakeError):
    reason = "unsupported_version"
    code = ErrorCode.UNSUPPORTED_VERSION


class UnexpectedNodeKey(HandshakeError):
    """The supernode proved a node key other than the one the client expected."""

    reason = "unexpected_node_key"


class BadHandshakeSignature(HandshakeError):
    reason = "bad_handshake_signature"


class WeakKey(HandshakeError):
    """An ephemeral key gave a degenerate (all-zero) X25519 shared secret."""

    reason = "weak_ephemeral_key"


class HandshakeTimeout(HandshakeError):
    reason = "handshake_timeout"
    code = ErrorCode.TIMEOUT


class ChannelError(ProtocolError):
    reason = "channel_error"
    code = ErrorCode.DECRYPT_FAILED


class DecryptError(ChannelError):
    """A frame failed authentication: tampered, replayed, reordered, truncated or forged."""

    reason = "decrypt_failed"


class AttachRejected(ProtocolError):
    """An ``Attach`` carried a presence record this session may not publish."""

    reason = "attach_rejected"
    code = ErrorCode.UNEXPECTED_MESSAGE


class InvalidState(AttachError):
    """Local misuse of the API, e.g. sending before the handshake or after close."""

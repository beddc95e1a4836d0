"""The plaintext messages: probes and the handshake (before the secure channel), and
``Error``, which may also travel sealed. Tags 1-6 in :mod:`overlay.attach.messages`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

from overlay.attach.errors import MalformedMessage
from overlay.attach.schema import (
    NONCE_BYTES,
    U8,
    U16,
    U32,
    Message,
    MessageType,
    check_bool,
    check_bytes,
    check_float,
    check_int,
    check_key,
    check_name,
    check_text,
)
from overlay.core.identity import SIGNATURE_BYTES


class HelloFlags(IntFlag):
    """``ClientHello.flags``. Unknown bits are refused."""

    NONE = 0
    #: Throwaway identity: lookups only; no Attach, no signalling, no presence.
    LOOKUP_ONLY = 1


KNOWN_HELLO_FLAGS = int(HelloFlags.LOOKUP_ONLY)


@dataclass(frozen=True)
class Probe(Message):
    """Unencrypted RTT probe, allowed before ``ClientHello``; ``sent_at`` is echoed."""

    nonce: bytes
    sent_at: float
    TAG = MessageType.PROBE

    def _check(self) -> None:
        check_bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)
        check_float("sent_at", self.sent_at)


@dataclass(frozen=True)
class ProbeReply(Message):
    """Unauthenticated answer to a Probe: a hint for supernode selection, nothing more."""

    nonce: bytes
    sent_at: float
    version: int
    accepting: bool
    load_permille: int
    TAG = MessageType.PROBE_REPLY

    def _check(self) -> None:
        check_bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)
        check_float("sent_at", self.sent_at)
        check_int("version", self.version, 0, U8)
        check_bool("accepting", self.accepting)
        check_int("load_permille", self.load_permille, 0, 1000)


@dataclass(frozen=True)
class ClientHello(Message):
    version: int
    client_ephemeral_pk: bytes
    client_identity_pk: bytes
    user: str
    device: str
    nonce: bytes
    flags: int
    TAG = MessageType.CLIENT_HELLO

    def _check(self) -> None:
        check_int("version", self.version, 0, U8)
        check_key("client_ephemeral_pk", self.client_ephemeral_pk)
        check_key("client_identity_pk", self.client_identity_pk)
        check_int("flags", self.flags, 0, U32)
        if self.flags & ~KNOWN_HELLO_FLAGS:
            raise MalformedMessage(f"unknown hello flags {self.flags & ~KNOWN_HELLO_FLAGS:#x}")
        lookup_only = bool(self.flags & HelloFlags.LOOKUP_ONLY)
        check_name("user", self.user, allow_empty=lookup_only)
        check_name("device", self.device, allow_empty=lookup_only)
        check_bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)

    @property
    def lookup_only(self) -> bool:
        return bool(self.flags & HelloFlags.LOOKUP_ONLY)


@dataclass(frozen=True)
class ServerHello(Message):
    version: int
    server_ephemeral_pk: bytes
    server_node_pk: bytes
    nonce: bytes
    signature: bytes
    TAG = MessageType.SERVER_HELLO

    def _check(self) -> None:
        check_int("version", self.version, 0, U8)
        check_key("server_ephemeral_pk", self.server_ephemeral_pk)
        check_key("server_node_pk", self.server_node_pk)
        check_bytes("nonce", self.nonce, NONCE_BYTES, NONCE_BYTES)
        check_bytes("signature", self.signature, SIGNATURE_BYTES, SIGNATURE_BYTES)


@dataclass(frozen=True)
class ClientAuth(Message):
    signature: bytes
    TAG = MessageType.CLIENT_AUTH

    def _check(self) -> None:
        check_bytes("signature", self.signature, SIGNATURE_BYTES, SIGNATURE_BYTES)


@dataclass(frozen=True)
class Error(Message):
    """Fatal: the sender closes the connection after it. Plaintext only before the handshake."""

    code: int
    message: str
    TAG = MessageType.ERROR

    def _check(self) -> None:
        check_int("code", self.code, 0, U16)
        check_text("message", self.message)

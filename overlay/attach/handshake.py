"""Mutually authenticated key agreement: ephemeral X25519, ed25519 transcript signatures.

Three plaintext messages (see :mod:`overlay.attach.messages` for the fields)::

    C -> S  ClientHello(version, client_ephemeral_pk, client_identity_pk, user, device,
                        nonce_c, flags)
    S -> C  ServerHello(version, server_ephemeral_pk, server_node_pk, nonce_s, sig_s)
    C -> S  ClientAuth(sig_c)

    th1   = H(DOMAIN, ClientHello body, version, server_ephemeral_pk, server_node_pk, nonce_s)
    sig_s = Sign(node key,     SERVER_SIG_DOMAIN + th1)
    th2   = H(th1, sig_s)                                   -- the session id
    sig_c = Sign(identity key, CLIENT_SIG_DOMAIN + th2)
    k_c2s = BLAKE2b(th2, key=X25519(e_c, e_s), person="overlay-c2s-v1")   (k_s2c likewise)

``H`` is BLAKE2b-256 over length-prefixed parts. The ClientHello body is hashed exactly as
sent, so both signatures cover both ephemeral keys, both long-term keys, both nonces, the
user, device, flags, offered and chosen versions. The client checks the node key against
the one it expected (pinned from the supernode's signed DHT record; ``None`` means first
contact, trust on first use) and the server's signature before it signs anything itself.
A replayed ClientHello/ClientAuth fails because each server handshake uses a fresh
ephemeral key and nonce, so an old ``sig_c`` is over a different ``th2``.

Both state machines are sans-IO: they take and return message bodies (not frames).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey

from overlay.attach.errors import (
    BadHandshakeSignature,
    HandshakeError,
    MalformedHandshake,
    ProtocolError,
    UnexpectedHandshakeMessage,
    UnexpectedNodeKey,
    UnsupportedVersion,
    WeakKey,
)
from overlay.attach.messages import (
    NONCE_BYTES,
    ClientAuth,
    ClientHello,
    HelloFlags,
    Message,
    ServerHello,
    decode,
    encode,
)
from overlay.core.identity import Identity, node_id_for, verify_signature

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1
HANDSHAKE_DOMAIN = b"overlay/handshake/v1\x00"
SERVER_SIG_DOMAIN = b"overlay/handshake/v1/server-signature\x00"
CLIENT_SIG_DOMAIN = b"overlay/handshake/v1/client-signature\x00"
SESSION_KEY_BYTES = 32

_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")


class HandshakeState(Enum):
    INITIAL = "initial"
    AWAITING_SERVER_HELLO = "awaiting_server_hello"
    AWAITING_CLIENT_AUTH = "awaiting_client_auth"
    COMPLETE = "complete"
    FAILED = "failed"


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True)
class HandshakeResult:
    """What a completed handshake established, from one side's point of view."""

    role: Role
    version: int
    #: The client's identity key and the supernode's node key, both proven.
    client_key: bytes
    node_key: bytes
    user: str
    device: str
    flags: int
    #: Transcript hash; equal on both sides; usable for channel binding.
    session_id: bytes
    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    #: Client side: no node key was expected (trust on first use). Always False on the server.
    first_contact: bool = False

    @property
    def peer_key(self) -> bytes:
        return self.node_key if self.role is Role.CLIENT else self.client_key

    @property
    def local_key(self) -> bytes:
        return self.client_key if self.role is Role.CLIENT else self.node_key

    @property
    def peer_node_id(self) -> bytes:
        return node_id_for(self.peer_key)

    @property
    def lookup_only(self) -> bool:
        return bool(self.flags & HelloFlags.LOOKUP_ONLY)


def _hash(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32, person=b"overlay-hs-v1")
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def _th1(hello_body: bytes, version: int, eph: bytes, node: bytes, nonce: bytes) -> bytes:
    return _hash(HANDSHAKE_DOMAIN, hello_body, version.to_bytes(1, "big"), eph, node, nonce)


def _session_keys(secret: PrivateKey, peer_ephemeral: bytes, th2: bytes) -> tuple[bytes, bytes]:
    """(client-to-server, server-to-client) keys."""
    try:
        shared = crypto_scalarmult(bytes(secret), peer_ephemeral)
    except CryptoError:
        raise WeakKey("ephemeral key gives a degenerate X25519 shared secret") from None
    if not any(shared):  # libsodium refuses this already; belt and braces
        raise WeakKey("ephemeral key gives a degenerate X25519 shared secret")

    def derive(person: bytes) -> bytes:
        h = hashlib.blake2b(th2, digest_size=SESSION_KEY_BYTES, key=shared, person=person)
        return h.digest()

    return derive(b"overlay-c2s-v1"), derive(b"overlay-s2c-v1")


def _expect(body: bytes, cls: type[_M]) -> _M:
    try:
        msg = decode(body)
    except ProtocolError as exc:
        raise MalformedHandshake(f"malformed handshake message: {exc}") from exc
    if type(msg) is not cls:
        raise UnexpectedHandshakeMessage(f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg


class _Machine:
    state: HandshakeState

    def _run(self, step: Callable[[], _T]) -> _T:
        """Run one step; any failure leaves the handshake FAILED and raises HandshakeError."""
        if self.state is HandshakeState.FAILED:
            raise HandshakeError("handshake already failed")
        try:
            return step()
        except HandshakeError:
            self.state = HandshakeState.FAILED
            raise
        except ProtocolError as exc:
            self.state = HandshakeState.FAILED
            raise MalformedHandshake(str(exc)) from exc


class ClientHandshake(_Machine):
    """Client side. ``start()`` gives the ClientHello body; ``receive(ServerHello body)``
    verifies the supernode and gives the ClientAuth body; then ``result`` is set.

    ``expected_node_key`` is required on purpose: pass the key from the supernode's signed
    record, or ``None`` for a first contact (host cache or bootstrap) to trust on first use.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        expected_node_key: bytes | None,
        user: str = "",
        device: str = "",
        flags: int = 0,
        version: int = PROTOCOL_VERSION,
        ephemeral: PrivateKey | None = None,
        nonce: bytes | None = None,
    ) -> None:
        if expected_node_key is not None and len(expected_node_key) != 32:
            raise ValueError("expected_node_key must be a 32-byte ed25519 public key")
        self.identity = identity
        self.expected_node_key = expected_node_key
        self._ephemeral = ephemeral or PrivateKey.generate()
        self.hello = ClientHello(
            version=version,
            client_ephemeral_pk=bytes(self._ephemeral.public_key),
            client_identity_pk=identity.public_key,
            user=user,
            device=device,
            nonce=os.urandom(NONCE_BYTES) if nonce is None else nonce,
            flags=int(flags),
        )
        self._hello_body = encode(self.hello)
        self.state = HandshakeState.INITIAL
        self.result: HandshakeResult | None = None

    def start(self) -> bytes:
        """The ClientHello body to send."""
        if self.state is not HandshakeState.INITIAL:
            raise HandshakeError(f"cannot start a handshake in state {self.state.value}")
        self.state = HandshakeState.AWAITING_SERVER_HELLO
        return self._hello_body

    def receive(self, body: bytes) -> bytes:
        """Process the ServerHello body; return the ClientAuth body to send."""
        return self._run(lambda: self._receive(body))

    def _receive(self, body: bytes) -> bytes:
        if self.state is not HandshakeState.AWAITING_SERVER_HELLO:
            raise UnexpectedHandshakeMessage(f"no message expected in state {self.state.value}")
        sh = _expect(body, ServerHello)
        if not MIN_PROTOCOL_VERSION <= sh.version <= self.hello.version:
            raise UnsupportedVersion(
                f"server chose version {sh.version}; client supports "
                f"{MIN_PROTOCOL_VERSION}..{self.hello.version}"
            )
        if self.expected_node_key is not None and not hmac.compare_digest(
            sh.server_node_pk, self.expected_node_key
        ):
            raise UnexpectedNodeKey(
                f"supernode proved node key {sh.server_node_pk.hex()[:16]}..., expected "
                f"{self.expected_node_key.hex()[:16]}..."
            )
        th1 = _th1(
            self._hello_body, sh.version, sh.server_ephemeral_pk, sh.server_node_pk, sh.nonce
        )
        if not verify_signature(sh.server_node_pk, SERVER_SIG_DOMAIN + th1, sh.signature):
            raise BadHandshakeSignature("supernode's handshake signature does not verify")
        th2 = _hash(th1, sh.signature)
        c2s, s2c = _session_keys(self._ephemeral, sh.server_ephemeral_pk, th2)
        auth = ClientAuth(self.identity.sign(CLIENT_SIG_DOMAIN + th2))
        self.result = HandshakeResult(
            role=Role.CLIENT,
            version=sh.version,
            client_key=self.identity.public_key,
            node_key=sh.server_node_pk,
            user=self.hello.user,
            device=self.hello.device,
            flags=self.hello.flags,
            session_id=th2,
            send_key=c2s,
            recv_key=s2c,
            first_contact=self.expected_node_key is None,
        )
        self.state = HandshakeState.COMPLETE
        return encode(auth)


class ServerHandshake(_Machine):
    """Supernode side. ``receive(ClientHello body)`` gives the ServerHello body;
    ``receive(ClientAuth body)`` verifies the client's proof, returns None and sets ``result``.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        min_version: int = MIN_PROTOCOL_VERSION,
        max_version: int = PROTOCOL_VERSION,
        ephemeral: PrivateKey | None = None,
        nonce: bytes | None = None,
    ) -> None:
        self.identity = identity
        self.min_version = min_version
        self.max_version = max_version
        self._ephemeral = ephemeral or PrivateKey.generate()
        self._nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        if len(self._nonce) != NONCE_BYTES:
            raise ValueError("nonce must be 16 bytes")
        self.state = HandshakeState.INITIAL
        self.hello: ClientHello | None = None
        self.result: HandshakeResult | None = None
        self._pending: tuple[bytes, bytes, bytes, int] | None = None  # th2, c2s, s2c, version

    def receive(self, body: bytes) -> bytes | None:
        return self._run(lambda: self._receive(body))

    def _receive(self, body: bytes) -> bytes | None:
        if self.state is HandshakeState.INITIAL:
            return self._on_hello(body)
        if self.state is HandshakeState.AWAITING_CLIENT_AUTH:
            self._on_auth(body)
            return None
        raise UnexpectedHandshakeMessage(f"no message expected in state {self.state.value}")

    def _on_hello(self, body: bytes) -> bytes:
        hello = _expect(body, ClientHello)
        version = min(hello.version, self.max_version)
        if version < self.min_version:
            raise UnsupportedVersion(
                f"client offers version {hello.version}; supernode supports "
                f"{self.min_version}..{self.max_version}"
            )
        eph_pk = bytes(self._ephemeral.public_key)
        node_pk = self.identity.public_key
        th1 = _th1(body, version, eph_pk, node_pk, self._nonce)
        signature = self.identity.sign(SERVER_SIG_DOMAIN + th1)
        th2 = _hash(th1, signature)
        c2s, s2c = _session_keys(self._ephemeral, hello.client_ephemeral_pk, th2)
        self.hello = hello
        self._pending = (th2, c2s, s2c, version)
        self.state = HandshakeState.AWAITING_CLIENT_AUTH
        return encode(ServerHello(version, eph_pk, node_pk, self._nonce, signature))

    def _on_auth(self, body: bytes) -> None:
        auth = _expect(body, ClientAuth)
        assert self.hello is not None and self._pending is not None
        th2, c2s, s2c, version = self._pending
        if not verify_signature(
            self.hello.client_identity_pk, CLIENT_SIG_DOMAIN + th2, auth.signature
        ):
            raise BadHandshakeSignature(
                "client's handshake signature does not verify under its identity key"
            )
        self.result = HandshakeResult(
            role=Role.SERVER,
            version=version,
            client_key=self.hello.client_identity_pk,
            node_key=self.identity.public_key,
            user=self.hello.user,
            device=self.hello.device,
            flags=self.hello.flags,
            session_id=th2,
            send_key=s2c,
            recv_key=c2s,
        )
        self._pending = None
        self.state = HandshakeState.COMPLETE

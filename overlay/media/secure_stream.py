"""End-to-end encryption and authentication on any :class:`~overlay.media.stream.ByteStream`.

Every media path (direct TCP, QUIC over a punched UDP path, a relay) carries only what this
module produces, so no path, relay or supernode ever sees plaintext, and a path that reaches
someone without the session keys never completes.

Keys. The two clients agreed on an X25519 shared secret through the signed invite and answer;
``transcript_hash`` is the hash of those two signed messages. One session races several paths
(direct TCP each way, UDP punch with QUIC, each relay), and each path starts its counters at 0,
so each path must have keys of its own: before anything else, each side sends a fresh random
``PATH_SALT_BYTES`` salt in clear on the path, and :func:`derive_keys` turns the secret, the
transcript hash and both salts (the session initiator's first) into one key per direction with
BLAKE2b keyed by the shared secret over ``transcript_hash | initiator salt | responder salt``,
with a different personalization for each direction. So no (key, nonce) pair is used on two
paths (either side's fresh salt changes both keys), the two directions never share a key, a
frame reflected back to its sender never authenticates, and frames replayed from one path
into another do not either.

Invite salt. When the signed invite carries the caller's ``path_salt`` (an :class:`InviteSalt`),
the caller's salt on a path is not random but ``BLAKE2b(key = invite path_salt, callee's salt
on that path)``: the callee, whose own salt is fresh, derives both salts and sends its salt and
its confirmation the moment the path is up, without waiting for anything from the caller (one
round trip less on every path). The caller sends its (derived) salt and confirmation once the
callee's salt arrived, and refuses a callee salt it has already seen in the session
(``"replayed_salt"``): so the callee's fresh salt still makes each path's keys its own, and a
path replayed into another (the callee's salt and frames played again to the caller) neither
authenticates nor makes the caller seal under a key it used before. The callee checks that
the caller's salt is the derived one (``"bad_salt"``).

Caller first (:func:`secure` with ``caller_first``: a 0-RTT QUIC path, or a caller's TCP dial
that says so, :mod:`.tcp_listener`): the mirror image. The caller sends a fresh salt and its
confirmation in its first flight and returns at once, unconfirmed; the callee's salt is
``BLAKE2b(key = invite path_salt, caller's salt)`` under another personalization, which the
caller checks as it arrives (``"bad_salt"``), then the callee's confirmation, before it
returns any byte of the callee's; the path is dropped (``"timeout"``) unless that
confirmation verified within the timeout (a far end that is not the callee never sends it).
The callee refuses a caller salt it has already seen in the session (``"replayed_salt"``)
before it sends anything: a replayed first flight would otherwise make it seal again under
keys it used.

Wire format (both directions)::

    path       = salt(16, random, in clear) | frame | frame | ...
    frame      = length(4, big endian) | ciphertext
    ciphertext = ChaCha20-Poly1305-IETF(key, nonce = 0(4) | counter(8, big endian),
                                        aad = length, plaintext = type(1) | body)

``counter`` starts at 0 and grows by one per frame in each direction; it is never sent, so a
replayed, reordered, dropped or altered frame fails authentication. ``length`` is checked
against the cap before anything is buffered. Frame types:

- ``CONFIRM`` (0), always and only the first frame: body = ``CONFIRM_LABEL`` + transcript hash.
  Only a holder of the direction's key can produce it, and it names the transcript: receiving
  it proves the peer holds the session keys (the "authenticated handshake" of a path).
- ``DATA`` (1): at most ``MAX_PLAINTEXT`` bytes of caller data.
- ``CLOSE`` (2), empty: the sender finished. End of stream without it is truncation.

The sans-IO core is :class:`SecureFramer`; :func:`secure` runs the confirmation over a
ByteStream and returns a :class:`SecureByteStream`, itself a ByteStream with the same ``path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from overlay.media.errors import PathLost
from overlay.media.signalling import PATH_SALT_BYTES
from overlay.media.stream import ByteStream, RelayRef, discard, discard_later

KEY_BYTES = 32
TAG_BYTES = 16
LENGTH_BYTES = 4
#: caller bytes per frame; ``SecureByteStream.send`` splits larger writes
MAX_PLAINTEXT = 16 * 1024
#: the largest ciphertext a peer may announce: type byte + plaintext + tag
MAX_CIPHERTEXT = 1 + MAX_PLAINTEXT + TAG_BYTES
CONFIRM_LABEL = b"overlay/media/confirm/v1\x00"
PERSON_I2R = b"ovl-media-i2r-v2"
PERSON_R2I = b"ovl-media-r2i-v2"
PERSON_CALLER_SALT = b"ovl-caller-salt1"
PERSON_CALLEE_SALT = b"ovl-callee-salt1"
MAX_COUNTER = 2**64 - 1

CONFIRM = 0
DATA = 1
CLOSE = 2

_LENGTH = struct.Struct(">I")


class SecureStreamError(PathLost):
    """The secured stream cannot go on (the path is lost). ``reason`` is one of:
    ``"bad_key"``, ``"bad_salt"`` (the caller's salt is not the one the invite's derives),
    ``"replayed_salt"`` (a callee salt seen on another path), ``"oversized"``, ``"auth"``
    (tampered, replayed, reordered or dropped frame, or wrong keys), ``"unconfirmed"`` (data
    before the confirmation), ``"bad_confirm"``, ``"after_close"``, ``"truncated"`` (end of
    stream without a CLOSE frame, or inside a frame), ``"timeout"``, ``"exhausted"`` (counter
    wrapped), ``"closed"`` (sending after close)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def derive_keys(
    shared_secret: bytes, transcript_hash: bytes, initiator: bool, path_salts: bytes
) -> tuple[bytes, bytes]:
    """``(send_key, recv_key)`` for one side on one path: BLAKE2b keyed by the X25519 shared
    secret over the transcript hash and ``path_salts`` (the initiator's salt, then the
    responder's), one personalization per direction (initiator-to-responder and back)."""
    if len(shared_secret) != 32 or not any(shared_secret):
        raise SecureStreamError("bad_key", "the shared secret is 32 non-zero bytes")
    if not 16 <= len(transcript_hash) <= 64:
        raise SecureStreamError("bad_key", "the transcript hash is 16 to 64 bytes")
    if len(path_salts) != 2 * PATH_SALT_BYTES:
        raise SecureStreamError("bad_key", f"the path salts are 2 x {PATH_SALT_BYTES} bytes")
    material = transcript_hash + path_salts
    i2r = hashlib.blake2b(material, key=shared_secret, digest_size=KEY_BYTES,
                          person=PERSON_I2R).digest()
    r2i = hashlib.blake2b(material, key=shared_secret, digest_size=KEY_BYTES,
                          person=PERSON_R2I).digest()
    return (i2r, r2i) if initiator else (r2i, i2r)


def new_path_salt() -> bytes:
    """A fresh random path salt (one per side per path, never reused)."""
    return os.urandom(PATH_SALT_BYTES)


@dataclass
class InviteSalt:
    """The caller's ``path_salt`` from a signed invite, for one session (both sides hold one;
    ``seen``: the peer's salts this side keyed a path with, each accepted once: the callee's
    at the caller, the caller's of 0-RTT paths at the callee)."""

    salt: bytes
    seen: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        if len(self.salt) != PATH_SALT_BYTES:
            raise SecureStreamError("bad_key", f"a path salt is {PATH_SALT_BYTES} bytes")

    def caller_salt(self, callee_salt: bytes) -> bytes:
        """The caller's salt on the path where the callee sent ``callee_salt``."""
        return self._derived(callee_salt, PERSON_CALLER_SALT)

    def callee_salt(self, caller_salt: bytes) -> bytes:
        """The callee's salt on a 0-RTT path where the caller sent ``caller_salt`` first."""
        return self._derived(caller_salt, PERSON_CALLEE_SALT)

    def _derived(self, peer_salt: bytes, person: bytes) -> bytes:
        return hashlib.blake2b(peer_salt, key=self.salt, digest_size=PATH_SALT_BYTES,
                               person=person).digest()

    def accept(self, peer_salt: bytes) -> None:
        """This side keys a path with the peer's fresh salt: once per session (the callee's at
        the caller; the caller's of a 0-RTT path at the callee, where a replayed first flight
        would make it seal again under keys it used)."""
        if peer_salt in self.seen:
            raise SecureStreamError("replayed_salt", "the peer's salt of another path")
        self.seen.add(peer_salt)


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


class SecureFramer:
    """Sans-IO framing for one side of a secured stream.

    ``hello()`` is the confirmation frame (sent first; :meth:`seal` prepends it when the caller
    did not send it yet). ``feed(data)`` takes whatever bytes arrived and returns the caller
    messages they completed, raising :class:`SecureStreamError` on anything wrong; once raised,
    the framer is dead. ``feed_eof()`` reports the end of the underlying stream.
    """

    def __init__(self, send_key: bytes, recv_key: bytes, transcript_hash: bytes,
                 max_plaintext: int = MAX_PLAINTEXT) -> None:
        if len(send_key) != KEY_BYTES or len(recv_key) != KEY_BYTES:
            raise SecureStreamError("bad_key", "keys are 32 bytes")
        if not 0 < max_plaintext <= MAX_PLAINTEXT:
            raise ValueError(f"max_plaintext is 1..{MAX_PLAINTEXT}")
        self._send_key = send_key
        self._recv_key = recv_key
        self._confirm_body = CONFIRM_LABEL + transcript_hash
        self.max_plaintext = max_plaintext
        self._send_counter = 0
        self._recv_counter = 0
        self._buffer = bytearray()
        self._hello_sent = False
        self._close_sent = False
        self._failed: SecureStreamError | None = None
        #: the peer's confirmation frame arrived and verified
        self.confirmed = False
        #: the peer's CLOSE frame arrived: nothing more will come
        self.peer_closed = False

    # -- sending ---------------------------------------------------------------------------

    def _frame(self, kind: int, body: bytes) -> bytes:
        if self._send_counter > MAX_COUNTER:
            raise SecureStreamError("exhausted", "send counter wrapped")
        header = _LENGTH.pack(1 + len(body) + TAG_BYTES)
        ciphertext = crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes([kind]) + body, header, _nonce(self._send_counter), self._send_key)
        self._send_counter += 1
        return header + ciphertext

    def hello(self) -> bytes:
        """The confirmation frame; b"" once it was produced."""
        if self._hello_sent:
            return b""
        self._hello_sent = True
        return self._frame(CONFIRM, self._confirm_body)

    def seal(self, msg: bytes) -> bytes:
        """One DATA frame (preceded by the confirmation if it was not sent yet)."""
        if self._close_sent:
            raise SecureStreamError("closed", "sealing after close")
        if len(msg) > self.max_plaintext:
            raise ValueError(f"a frame carries at most {self.max_plaintext} bytes")
        return self.hello() + self._frame(DATA, msg)

    def close(self) -> bytes:
        """The CLOSE frame; b"" if it was already produced."""
        if self._close_sent:
            return b""
        out = self.hello() + self._frame(CLOSE, b"")
        self._close_sent = True
        return out

    # -- receiving -------------------------------------------------------------------------

    def _fail(self, reason: str, detail: str = "") -> SecureStreamError:
        self._failed = SecureStreamError(reason, detail)
        self._buffer.clear()
        return self._failed

    def fail(self, reason: str, detail: str = "") -> None:
        """Kill the framer from outside (a deadline passed): what it is fed from now on, and
        the end of the stream, raise ``reason``."""
        if self._failed is None:
            self._fail(reason, detail)

    @property
    def failed(self) -> SecureStreamError | None:
        """Why the framer is dead, or None."""
        return self._failed

    def feed(self, data: bytes) -> list[bytes]:
        """Caller messages completed by ``data`` (possibly none)."""
        if self._failed is not None:
            raise self._failed
        out: list[bytes] = []
        if data and self.peer_closed:
            raise self._fail("after_close", "bytes after the peer's CLOSE frame")
        self._buffer += data
        while len(self._buffer) >= LENGTH_BYTES:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > 1 + self.max_plaintext + TAG_BYTES or length < 1 + TAG_BYTES:
                raise self._fail("oversized", f"a frame of {length} bytes")
            if len(self._buffer) < LENGTH_BYTES + length:
                break
            header = bytes(self._buffer[:LENGTH_BYTES])
            ciphertext = bytes(self._buffer[LENGTH_BYTES:LENGTH_BYTES + length])
            del self._buffer[:LENGTH_BYTES + length]
            if self._recv_counter > MAX_COUNTER:
                raise self._fail("exhausted", "receive counter wrapped")
            try:
                plain = crypto_aead_chacha20poly1305_ietf_decrypt(
                    ciphertext, header, _nonce(self._recv_counter), self._recv_key)
            except CryptoError:
                raise self._fail(
                    "auth", f"frame {self._recv_counter} does not authenticate") from None
            self._recv_counter += 1
            kind, body = plain[0], plain[1:]
            if not self.confirmed:
                if kind != CONFIRM:
                    raise self._fail("unconfirmed", "the first frame is not a confirmation")
                if not hmac.compare_digest(body, self._confirm_body):
                    raise self._fail("bad_confirm", "confirmation for another transcript")
                self.confirmed = True
            elif self.peer_closed:
                raise self._fail("after_close", "a frame after the peer's CLOSE frame")
            elif kind == DATA:
                out.append(body)
            elif kind == CLOSE and not body:
                self.peer_closed = True
            else:
                raise self._fail("auth", f"unexpected frame type {kind}")
        if self.peer_closed and self._buffer:
            raise self._fail("after_close", "bytes after the peer's CLOSE frame")
        return out

    def feed_eof(self) -> None:
        """The underlying stream ended: fine only after the peer's CLOSE frame."""
        if self._failed is not None:
            raise self._failed
        if not self.peer_closed:
            detail = "inside a frame" if self._buffer else "without a CLOSE frame"
            raise self._fail("truncated", f"the stream ended {detail}")


class SecureByteStream:
    """A :class:`ByteStream` of plaintext over a ByteStream that carries only ciphertext.

    ``send`` seals one frame per chunk of at most 16 KiB; ``recv`` returns decrypted bytes and
    ``b""`` only after the peer's authenticated CLOSE frame (a cut-off stream raises
    :class:`SecureStreamError` instead, so truncation is never mistaken for the end).
    """

    def __init__(self, raw: ByteStream, framer: SecureFramer, pending: bytes = b"",
                 relay: RelayRef | None = None, expect_salt: bytes | None = None) -> None:
        self.raw = raw
        self.framer = framer
        #: the peer's salt, still to arrive before its frames (a 0-RTT caller's stream)
        self._expect_salt = expect_salt
        self._salt = bytearray()
        self.path = raw.path
        #: the relay carrying ``raw``, when the caller says so (a media path's ``relay``)
        self.relay = relay
        self._pending = bytearray(pending)
        self._eof = False
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._confirm_deadline: asyncio.TimerHandle | None = None

    def require_confirmation(self, within_s: float) -> None:
        """Drop the path unless the peer's confirmation verified within ``within_s``: a
        caller-first stream returned before it, and a far end that took the connection but
        does not hold the session's keys (not the callee) never confirms. Its reader then
        gets ``"timeout"``; so does a sender."""
        self._confirm_deadline = asyncio.get_running_loop().call_later(
            within_s, self._confirmation_overdue, within_s)

    def _confirmation_overdue(self, within_s: float) -> None:
        self._confirm_deadline = None
        if self.framer.confirmed or self._closed:
            return
        self.framer.fail("timeout", f"no confirmation within {within_s}s")
        discard_later(self.raw)

    def _stop_deadline(self) -> None:
        if self._confirm_deadline is not None:
            self._confirm_deadline.cancel()
            self._confirm_deadline = None

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise SecureStreamError("closed", "send after close")
        if self.framer.failed is not None:
            raise self.framer.failed
        view = memoryview(data)
        async with self._send_lock:
            # batch up to 64 KiB of frames per write to the raw stream
            step = self.framer.max_plaintext
            batch = 4
            for start in range(0, len(view), step * batch):
                frames = [self.framer.seal(bytes(view[i:i + step]))
                          for i in range(start, min(len(view), start + step * batch), step)]
                await self.raw.send(b"".join(frames))

    async def recv(self, max_bytes: int = 65536) -> bytes:
        while not self._pending and not self._eof:
            data = await self.raw.recv(65536)
            if not data:
                self.framer.feed_eof()
                self._eof = True
                break
            if self._expect_salt is not None:
                data = self._strip_salt(data)
            for msg in self.framer.feed(data):
                self._pending += msg
            if self.framer.peer_closed:
                self._eof = True
        out = bytes(self._pending[:max_bytes])
        del self._pending[:max_bytes]
        return out

    def _strip_salt(self, data: bytes) -> bytes:
        """``data`` after the peer's salt, once that arrived and is the expected one."""
        assert self._expect_salt is not None
        need = PATH_SALT_BYTES - len(self._salt)
        self._salt += data[:need]
        if len(self._salt) < PATH_SALT_BYTES:
            return b""
        if not hmac.compare_digest(bytes(self._salt), self._expect_salt):
            raise SecureStreamError("bad_salt", "not the salt the invite's derives")
        self._expect_salt = None
        return data[need:]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_deadline()
        with contextlib.suppress(Exception):
            async with self._send_lock:
                frame = self.framer.close()
                if frame:
                    await self.raw.send(frame)
        await self.raw.close()

    async def discard(self) -> None:
        """Drop the path with no CLOSE frame (:func:`~overlay.media.stream.discard`)."""
        self._closed = True
        self._stop_deadline()
        await discard(self.raw)


async def secure(
    stream: ByteStream, shared_secret: bytes, transcript_hash: bytes, initiator: bool,
    timeout: float = 5.0, relay: RelayRef | None = None,
    invite_salt: InviteSalt | None = None, caller_first: bool = False,
) -> SecureByteStream:
    """Both sides send a path salt, derive this path's keys from both salts, send their
    confirmation and wait for the peer's (all within ``timeout``). Without ``invite_salt``
    both salts are fresh and sent at once; with it (the invite carried the caller's path
    salt) the callee sends its fresh salt and its confirmation at once, and the caller
    answers with the salt derived from the callee's (see the module's docstring).

    On success the path is authenticated end to end. On any failure the raw stream is closed
    and :class:`SecureStreamError` raised (``"timeout"`` when the peer stayed silent).

    ``caller_first`` (a 0-RTT path or a caller-first TCP dial, where the caller writes
    first; needs ``invite_salt``, ``"bad_salt"`` without): the caller sends a fresh salt and
    its confirmation and returns at once, unconfirmed (the callee's salt and confirmation
    are checked as they arrive, before any byte of the callee's is returned, and the path is
    dropped, ``"timeout"``, unless they verified within ``timeout``); the callee reads the
    caller's salt, refuses one it has seen in the session (``"replayed_salt"``), sends its
    salt (derived from the caller's and the invite's) and confirmation, and returns once the
    caller's confirmation verified.
    """
    if caller_first and invite_salt is None:
        await _close_quietly(stream)
        raise SecureStreamError("bad_salt", "a 0-RTT path needs the invite's path salt")
    if caller_first and initiator:
        assert invite_salt is not None
        return await _send_first(stream, shared_secret, transcript_hash, invite_salt, relay,
                                 timeout)
    pending = bytearray()
    try:
        async with asyncio.timeout(timeout):
            if caller_first or (invite_salt is not None and initiator):
                # the peer's fresh salt comes first and ours derives from it: the callee's on
                # a 0-RTT path (the caller returned above), else the caller's
                assert invite_salt is not None
                received = await _recv_salt(stream)
                peer = bytes(received[:PATH_SALT_BYTES])
                invite_salt.accept(peer)
                own = invite_salt.callee_salt(peer) if caller_first \
                    else invite_salt.caller_salt(peer)
                salts = own + peer if initiator else peer + own
                framer = _framer(shared_secret, transcript_hash, initiator, salts)
                await stream.send(own + framer.hello())
            elif invite_salt is not None:
                own = new_path_salt()
                expected = invite_salt.caller_salt(own)
                framer = _framer(shared_secret, transcript_hash, False, expected + own)
                await stream.send(own + framer.hello())
                received = await _recv_salt(stream)
                if not hmac.compare_digest(bytes(received[:PATH_SALT_BYTES]), expected):
                    raise SecureStreamError("bad_salt", "not the salt the invite's derives")
            else:
                own = new_path_salt()
                await stream.send(own)
                received = await _recv_salt(stream)
                peer = bytes(received[:PATH_SALT_BYTES])
                salts = own + peer if initiator else peer + own
                framer = _framer(shared_secret, transcript_hash, initiator, salts)
                await stream.send(framer.hello())
            for msg in framer.feed(bytes(received[PATH_SALT_BYTES:])):
                pending += msg
            while not framer.confirmed:
                data = await stream.recv(65536)
                if not data:
                    framer.feed_eof()
                    raise SecureStreamError("truncated", "the stream ended before confirmation")
                for msg in framer.feed(data):
                    pending += msg
    except TimeoutError:
        await _close_quietly(stream)
        raise SecureStreamError("timeout", f"no confirmation within {timeout}s") from None
    except BaseException:
        await _close_quietly(stream)
        raise
    secured = SecureByteStream(stream, framer, bytes(pending), relay)
    if framer.peer_closed:
        secured._eof = True
    return secured


async def _send_first(stream: ByteStream, shared_secret: bytes, transcript_hash: bytes,
                      invite_salt: InviteSalt, relay: RelayRef | None,
                      timeout: float) -> SecureByteStream:
    """The caller's side of a caller-first path: its fresh salt and confirmation, now (the
    callee's must verify within ``timeout``)."""
    own = new_path_salt()
    expected = invite_salt.callee_salt(own)
    framer = _framer(shared_secret, transcript_hash, True, own + expected)
    try:
        await stream.send(own + framer.hello())
    except BaseException:
        await _close_quietly(stream)
        raise
    secured = SecureByteStream(stream, framer, relay=relay, expect_salt=expected)
    secured.require_confirmation(timeout)
    return secured


def _framer(shared_secret: bytes, transcript_hash: bytes, initiator: bool,
            path_salts: bytes) -> SecureFramer:
    send_key, recv_key = derive_keys(shared_secret, transcript_hash, initiator, path_salts)
    return SecureFramer(send_key, recv_key, transcript_hash)


async def _recv_salt(stream: ByteStream) -> bytearray:
    """The peer's first bytes, at least its salt."""
    received = bytearray()
    while len(received) < PATH_SALT_BYTES:
        data = await stream.recv(65536)
        if not data:
            raise SecureStreamError("truncated", "the stream ended before the salt")
        received += data
    return received


async def _close_quietly(stream: ByteStream) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stream.close(), 2.0)

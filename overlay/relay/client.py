"""Connecting to a peer through a relay: :func:`relay_connect` returns a
:class:`~overlay.media.stream.ByteStream` (``path == "relay"``) once the relay has paired us.

The stream is a plain asyncio Protocol with flow control both ways: ``send`` waits while the
socket's write buffer is full (so the relay's back-pressure reaches the sender), and reading
pauses while more than :data:`RECV_HIGH_WATER` bytes wait for ``recv``. Only ciphertext
should go through it: wrap it with :func:`overlay.media.secure_stream.secure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable

from overlay.relay.errors import RelayError
from overlay.relay.protocol import (
    REASON_UNKNOWN_TOKEN,
    ROLE_CALLEE,
    ROLE_CALLER,
    SessionLimits,
    decode_limits,
    decode_status,
    encode_hello,
)

RECV_HIGH_WATER = 1024 * 1024
RECV_LOW_WATER = 256 * 1024
#: how long ``close`` waits for the peer's end of stream (so nothing in flight is reset)
LINGER_S = 2.0
UNKNOWN_TOKEN_RETRY_S = 0.25
#: the first retry of a callee that came before the caller; each next one waits 1.5 times
#: longer, up to UNKNOWN_TOKEN_RETRY_S (the caller usually arrives within a round trip)
FIRST_UNKNOWN_TOKEN_RETRY_S = 0.05


class RelayRefused(RelayError, ConnectionError):
    """The relay answered REFUSED; ``reason`` is its word for why (see :mod:`overlay.relay`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"relay refused: {reason}")
        self.reason = reason


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


class RelayLimitReached(RelayError, ConnectionError):
    """The relay ended the session at one of the limits its OK status announced (bytes or
    seconds); a new session (a new invite) may continue, e.g. resume a transfer."""


class _RelayProtocol(asyncio.Protocol):
    def __init__(self, hello: bytes) -> None:
        self._hello = hello
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.answer: asyncio.Future[tuple[bool, str, SessionLimits | None]] = \
            loop.create_future()
        self._status = bytearray()
        self.rx = bytearray()
        self.eof = False
        self.lost = False
        self.error: Exception | None = None
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.Event()
        self._reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self._hello)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self._status += data
            try:
                parsed = decode_status(bytes(self._status))
            except ValueError as exc:
                self.answer.set_exception(ConnectionError(f"not a relay: {exc}"))
                return
            if parsed is None:
                if len(self._status) > 257:
                    self.answer.set_exception(ConnectionError("not a relay"))
                return
            ok, reason, used = parsed
            try:
                limits = decode_limits(bytes(self._status[:used])) if ok else None
            except ValueError as exc:
                self.answer.set_exception(ConnectionError(f"not a relay: {exc}"))
                return
            data = bytes(self._status[used:])
            self._status.clear()
            self.answer.set_result((ok, reason, limits))
            if not ok or not data:
                return
        self.rx += data
        self.readable.set()
        if self._reading and len(self.rx) > RECV_HIGH_WATER and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def consumed(self) -> None:
        if not self._reading and len(self.rx) < RECV_LOW_WATER and self.transport is not None \
                and not self.eof and not self.lost:
            self._reading = True
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.readable.set()
        if not self.answer.done():
            self.answer.set_exception(ConnectionError("the relay closed before answering"))
        return True  # our direction may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self.readable.set()
        self.writable.set()
        self.closed.set()
        if not self.answer.done():
            self.answer.set_exception(ConnectionError(
                f"the relay closed before answering{f': {exc}' if exc else ''}"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class RelayByteStream:
    """A ByteStream through a relay, to the peer that presented the same token."""

    path = "relay"

    def __init__(self, proto: _RelayProtocol, relay_id: str,
                 limits: SessionLimits | None = None) -> None:
        self._proto = proto
        #: the relay's node id (hex) when known, else its ``host:port``
        self.relay_id = relay_id
        #: what the relay said it allows this session (None: a relay that does not say)
        self.limits = limits
        self._closed = False
        self._paired_at = asyncio.get_running_loop().time()
        #: bytes we wrote and bytes we received: together at least what the relay counted
        self.sent = 0
        self.received = 0

    def limit_reached(self) -> str | None:
        """Why the relay ended the session, when it ended at an announced limit."""
        limits = self.limits
        if limits is None:
            return None
        if self.sent + self.received >= limits.max_bytes:
            return (f"relay {self.relay_id} ended the session at its limit of "
                    f"{_size(limits.max_bytes)} per session")
        elapsed = asyncio.get_running_loop().time() - self._paired_at
        if elapsed >= limits.max_seconds - min(1.0, limits.max_seconds / 10):
            return (f"relay {self.relay_id} ended the session at its limit of "
                    f"{limits.max_seconds} s per session")
        return None

    def _ended(self, detail: str) -> ConnectionError:
        reason = self.limit_reached()
        if reason is not None:
            return RelayLimitReached(reason)
        return ConnectionError(detail)

    @property
    def transport(self) -> asyncio.Transport:
        assert self._proto.transport is not None
        return self._proto.transport

    async def send(self, data: bytes) -> None:
        proto = self._proto
        if self._closed or proto.lost or self.transport.is_closing():
            raise ConnectionError("the relay stream is closed")
        self.transport.write(data)
        self.sent += len(data)
        await proto.writable.wait()
        if proto.lost:
            raise self._ended(f"the relay connection was lost: {proto.error or 'closed'}")

    async def recv(self, max_bytes: int = 65536) -> bytes:
        proto = self._proto
        while not proto.rx:
            if proto.eof or proto.lost:
                if proto.error is not None:
                    raise self._ended(f"the relay connection was lost: {proto.error}")
                if self.limit_reached() is not None:
                    raise self._ended("")
                return b""
            proto.readable.clear()
            await proto.readable.wait()
        out = bytes(proto.rx[:max_bytes])
        del proto.rx[:max_bytes]
        self.received += len(out)
        proto.consumed()
        return out

    async def close(self) -> None:
        """Send our end of stream, wait (briefly) for the peer's, then close: closing while
        the peer still sends would reset the connection and could lose our last bytes."""
        if self._closed:
            return
        self._closed = True
        proto = self._proto
        transport = self.transport
        with contextlib.suppress(Exception):
            if not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()
            deadline = asyncio.get_running_loop().time() + LINGER_S
            while not (proto.eof or proto.lost):
                proto.rx.clear()  # nobody reads any more
                proto.consumed()
                proto.readable.clear()
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proto.readable.wait(), remaining)
        transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proto.closed.wait(), 1.0)


async def relay_connect(
    host: str,
    port: int,
    token: bytes,
    role: int,
    rate_bps: int = 0,
    timeout: float = 20.0,
    *,
    voucher: bytes | None = None,
    relay_id: str | None = None,
    retry_unknown_token: bool = True,
    connected: Awaitable[socket.socket] | None = None,
) -> RelayByteStream:
    """Meet the holder of ``token`` at the relay ``host:port``.

    ``role`` is :data:`~overlay.relay.ROLE_CALLER` (creates the session and waits for the
    callee, up to the relay's pairing wait) or :data:`~overlay.relay.ROLE_CALLEE`. ``rate_bps``
    0 asks for the relay's per-session cap. ``timeout`` bounds everything (connect, answer,
    pairing). ``retry_unknown_token`` (callee only): a callee usually arrives before the
    caller (it starts its path attempts when it sends its answer, the caller when that answer
    arrives); the relay holds it up to 3 s (:mod:`overlay.relay.early_callees`) and answers
    once the caller came, or refuses it "unknown token" (when the hold ends, at once past the
    hold's limits, and at once at an older relay); so by default the callee asks again after
    0.05 s, then 1.5 times longer each time up to every 0.25 s, until ``timeout``. Pass False
    to fail at the first refusal.
    ``voucher`` (a caller's credential, :mod:`overlay.relay.voucher`): without one, a caller
    is admitted only for a token an attached client reserved (``RelayReserve``).

    ``connected``: a TCP connection to the relay opened ahead (:mod:`overlay.media.
    relay_preconnect`), used for the first hello; when it fails or the relay closed it, a new
    connection is opened (within ``timeout``).

    Raises :class:`RelayRefused` (``.reason``) or ``ConnectionError`` (also on timeout).
    """
    if role not in (ROLE_CALLER, ROLE_CALLEE):
        raise ValueError("role is ROLE_CALLER (0) or ROLE_CALLEE (1)")
    hello = encode_hello(role, token, rate_bps, voucher)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = FIRST_UNKNOWN_TOKEN_RETRY_S
    relay_id = relay_id or f"{host}:{port}"
    if connected is not None:
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                sock = await connected
            return await _connect_once(host, port, hello, max(0.0, deadline - loop.time()),
                                       relay_id, sock)
        except RelayRefused as exc:
            if not (retry_unknown_token and exc.reason == REASON_UNKNOWN_TOKEN):
                raise
        except (OSError, TimeoutError):
            pass  # the connection opened ahead failed, or went stale: open a new one
    while True:
        try:
            return await _connect_once(host, port, hello, max(0.0, deadline - loop.time()),
                                       relay_id)
        except RelayRefused as exc:
            if not (retry_unknown_token and exc.reason == REASON_UNKNOWN_TOKEN
                    and deadline - loop.time() > pause):
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, UNKNOWN_TOKEN_RETRY_S)


async def _connect_once(
    host: str, port: int, hello: bytes, timeout: float, relay_id: str,
    sock: socket.socket | None = None,
) -> RelayByteStream:
    loop = asyncio.get_running_loop()
    transport: asyncio.BaseTransport | None = None
    proto: _RelayProtocol | None = None

    def give_up() -> None:
        if proto is not None and not proto.answer.done():
            proto.answer.cancel()
        if transport is not None:
            transport.abort()  # type: ignore[attr-defined]

    try:
        async with asyncio.timeout(timeout):
            if sock is None:
                transport, proto = await loop.create_connection(
                    lambda: _RelayProtocol(hello), host, port)
            else:
                transport, proto = await loop.create_connection(
                    lambda: _RelayProtocol(hello), sock=sock)
            ok, reason, limits = await proto.answer
    except TimeoutError:
        give_up()
        raise ConnectionError(f"relay {host}:{port}: no answer within {timeout:.1f}s") from None
    except OSError as exc:
        give_up()
        if isinstance(exc, ConnectionError):
            raise
        raise ConnectionError(f"relay {host}:{port}: {exc}") from exc
    except BaseException:
        give_up()
        raise
    if not ok:
        transport.close()
        raise RelayRefused(reason)
    return RelayByteStream(proto, relay_id, limits)

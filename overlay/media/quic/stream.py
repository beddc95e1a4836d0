"""The asyncio adapter of a media QUIC path: :class:`QuicByteStream`, a ByteStream over a
sans-IO :class:`~overlay.media.quic.core.QuicStreamCore` on a
:class:`~overlay.media.media_socket.MediaSocket`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from overlay.core.addresses import Address
from overlay.media.media_socket import MediaSocket
from overlay.media.quic.core import QuicPathError, QuicStreamCore
from overlay.media.stream import RelayRef

PATH_NAME = "udp-punch"
KEEPALIVE_S = 10.0
#: ``send`` waits while more than this is unsent or unacknowledged
SEND_HIGH_WATER = 512 * 1024
#: ``close`` gives up waiting for acknowledgements after this long without progress
CLOSE_STALL_S = 10.0


class QuicByteStream:
    """The asyncio adapter: a :class:`ByteStream` over :class:`QuicStreamCore` on a
    :class:`MediaSocket`. Made by :func:`quic_connect`."""

    path = PATH_NAME
    relay: RelayRef | None = None

    def __init__(self, media: MediaSocket, core: QuicStreamCore, peer: Address) -> None:
        self.media = media
        self.core = core
        self.peer = peer
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self._keepalive = self._loop.call_later(KEEPALIVE_S, self._ping)
        self._handshake_deadline: asyncio.TimerHandle | None = None
        #: takes each DATAGRAM frame received (a call); None: they are discarded
        self.datagram_handler: Callable[[bytes], None] | None = None
        media.add_quic_route(self, cid=core.conn.host_cid, addr=peer)

    # -- MediaSocket side --------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.core.receive_datagram(data, addr, self._loop.time())
        self._after()

    def flush(self) -> None:
        """Act on what the core did before this stream took it (a server's first Initial,
        read before it was known to be its session's): send, route, arm the timer."""
        self._after()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self._after()

    def _ping(self) -> None:
        if self.core.terminated:
            return
        self.core.ping()
        self._after()
        self._keepalive = self._loop.call_later(KEEPALIVE_S, self._ping)

    def _after(self) -> None:
        """Send what is due, route new connection ids, re-arm the timer, wake waiters."""
        for data, addr in self.core.datagrams_to_send(self._loop.time()):
            self.media.sendto(data, addr)
        for cid in self.core.new_cids:
            self.media.add_quic_route(self, cid=cid)
        for cid in self.core.retired_cids:
            self.media.remove_quic_cid(cid)
        self.core.new_cids.clear()
        self.core.retired_cids.clear()
        while self.core.datagrams:
            data = self.core.datagrams.popleft()
            if self.datagram_handler is not None:
                self.datagram_handler(data)
        at = self.core.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = at
            if at is not None:
                self._timer = self._loop.call_at(at, self._on_timer)
        if self.core.terminated:
            self._teardown()
        self._changed.set()

    def require_handshake(self, within_s: float) -> None:
        """Abort unless the handshake completes within ``within_s``: a server sends before it
        (0.5-RTT), and the client of an Initial that arrived early may be gone, or was never
        there."""

        def check() -> None:
            self._handshake_deadline = None
            if not self.core.handshake_done and not self.core.terminated:
                self.abort(f"no QUIC handshake with {self.peer[0]}:{self.peer[1]} "
                           f"within {within_s}s")

        if not self.core.handshake_done:
            self._handshake_deadline = self._loop.call_later(within_s, check)

    def _teardown(self) -> None:
        if self._handshake_deadline is not None:
            self._handshake_deadline.cancel()
            self._handshake_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._keepalive.cancel()
        self.media.remove_quic_routes(self)

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate()``; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # -- datagrams beside the stream (RFC 9221) ---------------------------------------------

    def datagrams_supported(self) -> bool:
        return self.core.datagrams_supported()

    def send_datagram(self, data: bytes) -> bool:
        """Send ``data`` as one unreliable DATAGRAM frame; False when it was dropped."""
        sent = self.core.send_datagram(data)
        if sent:
            self._after()
        return sent

    # -- ByteStream --------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        if not self.core.stream_open:
            await self._wait(lambda: self.core.stream_open or self.core.terminated)
        self.core.write(data)
        self._after()
        await self._wait(lambda: self.core.terminated
                         or self.core.unacknowledged() <= SEND_HIGH_WATER)
        if self.core.terminated and self.core.error:
            raise QuicPathError(self.core.error)

    async def recv(self, max_bytes: int = 65536) -> bytes:
        await self._wait(lambda: bool(self.core.received) or self.core.fin_received
                         or self.core.terminated)
        if self.core.received:
            out = bytes(self.core.received[:max_bytes])
            del self.core.received[:max_bytes]
            return out
        if self.core.fin_received:
            return b""
        raise QuicPathError(self.core.error or "the connection closed without FIN")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.core.terminated:
            self.core.finish()
            self._after()
            # wait for the peer to acknowledge everything, as long as it makes progress
            left = [self.core.unacknowledged()]

            def progressed() -> bool:
                return (self.core.terminated or self.core.all_acknowledged()
                        or self.core.unacknowledged() < left[0])

            while not (self.core.terminated or self.core.all_acknowledged()):
                left[0] = self.core.unacknowledged()
                if not await self._wait(progressed, CLOSE_STALL_S):
                    break
            self.core.close()
            self._after()
            # stay routed while the CONNECTION_CLOSE goes out and the peer may echo it
            await self._wait(lambda: self.core.terminated, 0.5)
        self._teardown()

    def abort(self, reason: str) -> None:
        """Close at once with an application error (no waiting for acknowledgements)."""
        self._closed = True
        if not self.core.terminated:
            self.core.close(reason)
            self._after()
        self._teardown()
        self.core.terminated = True
        self._changed.set()


class OwningQuicStream:
    """A QUIC media path that owns what it runs on: closing (or losing) it also runs
    ``release`` (close its own socket, end a relay binding). ``raw`` is the QUIC stream (its
    DATAGRAM frames carry a call's frames); ``path`` and ``relay`` label the path."""

    def __init__(self, raw: QuicByteStream, release: Callable[[], Awaitable[None]], *,
                 path: str = PATH_NAME, relay: RelayRef | None = None) -> None:
        self.raw = raw
        self.path = path
        self.relay = relay
        self._release = release
        self._released = False

    async def send(self, data: bytes) -> None:
        await self.raw.send(data)

    async def recv(self, max_bytes: int = 65536) -> bytes:
        return await self.raw.recv(max_bytes)

    async def close(self) -> None:
        try:
            await self.raw.close()
        finally:
            await self._release_once()

    async def discard(self) -> None:
        """Abort the QUIC connection (no waiting for acknowledgements) and release what it
        runs on at once (:func:`~overlay.media.stream.discard`)."""
        try:
            self.raw.abort("path not used")
        finally:
            await self._release_once()

    async def _release_once(self) -> None:
        if not self._released:
            self._released = True
            await self._release()

"""The one interface every media path offers: an ordered, reliable byte stream.

Direct TCP, QUIC over a punched UDP path and a relay all hand the transfer code a
:class:`ByteStream`; end-to-end encryption and authentication sit on top of it
(:mod:`overlay.media.secure_stream`), so no path ever carries plaintext. Every stream says
which path it is (``path``); a :class:`MediaStream`, what the path race hands over, also says
which relay carries it (``relay``, None on the other paths), and one wrapping another keeps
both and names the stream it wraps ``raw`` (so a call finds the QUIC stream under any
wrappers, :func:`overlay.call.stream_io.datagram_carrier`, and a TCP socket's write buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from overlay.core.tasks import TaskSet
from overlay.media.errors import losing_path


@dataclass(frozen=True)
class RelayRef:
    """The relay that carries a path: its node key, and the short id reports show."""

    key: bytes

    @property
    def id(self) -> str:
        return self.key.hex()[:16]


class ByteStream(Protocol):
    """Ordered, reliable bytes in both directions."""

    #: "direct-tcp", "tcp-punch", "udp-punch" or "relay"
    path: str

    async def send(self, data: bytes) -> None:
        """Queue ``data``; returns once the transport can take more (back-pressure)."""

    async def recv(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""

    async def close(self) -> None:
        """Finish sending and close."""


class MediaStream(ByteStream, Protocol):
    """A :class:`ByteStream` that is one media path, raw or secured."""

    #: the relay carrying the stream; None when the path has none
    relay: RelayRef | None


@runtime_checkable
class Discardable(Protocol):
    """A stream that can be dropped at once (:func:`discard`)."""

    async def discard(self) -> None:
        """Close with no graceful end and give back what the path holds, now."""


async def discard(stream: ByteStream) -> None:
    """Drop a path that carried nothing of ours (a race's loser, a spare never used): what it
    holds -- a relay session's budget, a socket -- is given back at once, not after a graceful
    close's round trips (a QUIC close waits for its FIN to be acknowledged, then for the
    peer's CONNECTION_CLOSE; a TCP connection is reset, which also spares both sides its
    TIME_WAIT). A stream with no quicker way is closed."""
    if isinstance(stream, Discardable):
        await stream.discard()
    else:
        await stream.close()


#: closes, discards and cancelled attempts winding down, which nobody awaits
unawaited_closes = TaskSet()


def close_later(stream: ByteStream | None) -> None:
    """Close a stream the race will not use, without waiting (also from a cancelled task)."""
    if stream is None:
        return

    async def close() -> None:
        with contextlib.suppress(Exception):
            await stream.close()

    unawaited_closes.spawn(close())


def discard_later(stream: ByteStream | None) -> None:
    """Drop a path that carried nothing of ours (:func:`~overlay.media.stream.discard`),
    without waiting (also from a cancelled task): a relay session it holds is released now,
    its budget free for the next call."""
    if stream is None:
        return

    async def drop() -> None:
        with contextlib.suppress(Exception):
            await discard(stream)

    unawaited_closes.spawn(drop())


class TcpByteStream:
    """A :class:`MediaStream` over an asyncio TCP connection. The socket's ConnectionErrors
    come out as :class:`~overlay.media.errors.PathLost`. ``caller_first``: a caller's dial
    that both sides secure caller first (:mod:`overlay.media.tcp_listener`)."""

    relay: RelayRef | None = None

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "direct-tcp",
        caller_first: bool = False,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.path = path
        self.caller_first = caller_first

    async def send(self, data: bytes) -> None:
        with losing_path():
            self.writer.write(data)
            await self.writer.drain()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        with losing_path():
            return await self.reader.read(max_bytes)

    async def close(self) -> None:
        """Finish sending and close; reset the connection instead when the peer closed first
        (:func:`peer_closed_first`)."""
        if peer_closed_first(self.writer):
            self._reset()
            return
        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            self.writer.close()
            await self.writer.wait_closed()

    async def discard(self) -> None:
        """Reset the connection: it carried nothing of ours, and its 4-tuple is free again
        at once on both sides (no TIME_WAIT)."""
        self._reset()

    def _reset(self) -> None:
        with contextlib.suppress(OSError):
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.writer.transport.abort()


#: ``SO_LINGER`` on, for 0 s: closing the socket sends RST and keeps no TIME_WAIT state
_LINGER_RESET = struct.pack("ii", 1, 0)
#: ``tcpi_state`` (the first byte of Linux's ``TCP_INFO``) of a socket whose peer sent its FIN
#: before we closed
_TCP_CLOSE_WAIT = 8


def peer_closed_first(writer: asyncio.StreamWriter) -> bool:
    """Whether the peer's FIN has arrived and we have not closed (the kernel's
    ``CLOSE_WAIT``). Such a connection is closed by a reset: the peer has ended it (it reads
    nothing more), and its side leaves ``FIN_WAIT_2`` at once instead of holding the 4-tuple
    in TIME_WAIT for a minute. That matters for TCP hole punching
    (:mod:`overlay.media.tcp_punch_io`), which connects from the media listener's port to the
    peer's every time: a 4-tuple in TIME_WAIT refuses the next punch between the same two
    (``EADDRNOTAVAIL``), and the pair would need a relay. The rule of go-libp2p's TCP
    transport, which resets every connection (``SO_LINGER`` 0), here only where the peer
    closed first, so that no byte of ours a live peer still reads is dropped."""
    sock = writer.get_extra_info("socket")
    tcp_info = getattr(socket, "TCP_INFO", None)
    if sock is None or tcp_info is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 8)
    except OSError:
        return False
    return len(info) > 0 and info[0] == _TCP_CLOSE_WAIT

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
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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
    peer's CONNECTION_CLOSE). A stream with no quicker way (TCP: its close is immediate) is
    closed."""
    if isinstance(stream, Discardable):
        await stream.discard()
    else:
        await stream.close()


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
        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            self.writer.close()
            await self.writer.wait_closed()

"""The one interface every media path offers: an ordered, reliable byte stream.

Direct TCP, QUIC over a punched UDP path and a relay all hand the transfer code a
:class:`ByteStream`; end-to-end encryption and authentication sit on top of it
(:mod:`overlay.media.secure_stream`), so no path ever carries plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class ByteStream(Protocol):
    """Ordered, reliable bytes in both directions."""

    #: "direct-tcp", "udp-punch" or "relay"
    path: str

    async def send(self, data: bytes) -> None:
        """Queue ``data``; returns once the transport can take more (back-pressure)."""

    async def recv(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""

    async def close(self) -> None:
        """Finish sending and close."""


class TcpByteStream:
    """A :class:`ByteStream` over an asyncio TCP connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "direct-tcp"
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.path = path

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        return await self.reader.read(max_bytes)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            self.writer.close()
            await self.writer.wait_closed()

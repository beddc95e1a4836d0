"""A client's TCP listener for direct media connections, and dialling one: a connection
starts with the 16-byte session id it belongs to (the listener routes it to that session's
race, and drops one for a session it does not expect).
"""

from __future__ import annotations

import asyncio
import contextlib

from overlay.media.stream import TcpByteStream

TCP_CONNECT_TIMEOUT_S = 3.0


class MediaListener:
    """A client's TCP listener for direct connections; routes each incoming connection to
    the session whose id it starts with."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.waiting: dict[bytes, asyncio.Queue[TcpByteStream]] = {}

    async def start(self, host: str, port: int = 0) -> None:
        # SO_REUSEPORT: TCP hole punching connects from this port while it listens
        # (:mod:`overlay.media.tcp_punch_io`); Linux allows that only to the same user
        self.server = await asyncio.start_server(self._accept, host, port, reuse_port=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                session_id = await reader.readexactly(16)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        queue = self.waiting.get(session_id)
        if queue is None:
            writer.close()  # not a session we expect: drop without a word
            return
        queue.put_nowait(TcpByteStream(reader, writer))

    def expect(self, session_id: bytes) -> asyncio.Queue[TcpByteStream]:
        """The queue of connections for ``session_id``."""
        return self.waiting.setdefault(session_id, asyncio.Queue())

    def forget(self, session_id: bytes) -> None:
        self.waiting.pop(session_id, None)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


async def dial_tcp(host: str, port: int, session_id: bytes) -> TcpByteStream:
    async with asyncio.timeout(TCP_CONNECT_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, port)
    writer.write(session_id)
    return TcpByteStream(reader, writer)

"""Real loopback TCP connections as media paths, for tests of what runs on top of a path
(the race's choices, selection marks, salts) rather than of the path itself."""

from __future__ import annotations

import asyncio

from overlay.media.connect import Attempt
from overlay.media.errors import PathLost
from overlay.media.stream import MediaStream, TcpByteStream
from overlay.media.tcp_listener import MediaListener, dial_tcp


async def tcp_stream_pair(host: str = "127.0.0.1", path: str = "direct-tcp"
                          ) -> tuple[TcpByteStream, TcpByteStream]:
    """The two ends of one real TCP connection on ``host``, each labelled ``path``: the
    dialling end first."""
    accepted: asyncio.Queue[TcpByteStream] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(TcpByteStream(reader, writer, path=path))

    server = await asyncio.start_server(on_client, host, 0)
    reader, writer = await asyncio.open_connection(host, server.sockets[0].getsockname()[1])
    other = await asyncio.wait_for(accepted.get(), 5)
    server.close()
    return TcpByteStream(reader, writer, path=path), other


async def unsecured(raw: MediaStream) -> MediaStream:
    """A race's securer that leaves the path as it is (where its encryption is not under
    test)."""
    return raw


async def ended(stream: TcpByteStream, timeout: float = 5.0) -> bool:
    """Whether the far end dropped the path: ``stream`` reads the end of the stream, or a
    reset (:class:`~overlay.media.errors.PathLost`: how a discarded TCP path ends), within
    ``timeout``. False when bytes arrive instead."""
    try:
        return await asyncio.wait_for(stream.recv(64), timeout) == b""
    except PathLost:
        return True


def record_sends(stream: TcpByteStream) -> bytearray:
    """Everything ``stream`` sends from now on, as an attacker carrying the path records it."""
    sent = bytearray()
    original_send = stream.send

    async def recording_send(data: bytes) -> None:
        sent.extend(data)
        await original_send(data)

    stream.send = recording_send  # type: ignore[method-assign]
    return sent


def direct_tcp_attempts(listener: MediaListener, session_id: bytes) -> tuple[Attempt, Attempt]:
    """A session's direct TCP attempts on loopback: the caller's dial of the callee's media
    ``listener`` (``tcp-dial-0``) and the callee's accept of it (``tcp-accept``)."""
    queue = listener.expect(session_id)

    async def dial() -> MediaStream:
        return await dial_tcp("127.0.0.1", listener.port, session_id)

    async def accept() -> MediaStream:
        return await queue.get()

    return dial, accept

"""What a media-layer attacker needs in the adversary tests: real TCP paths on loopback that
the attacker carries (recording forwarders, i.e. a relay or an on-path box), and secured
streams where the attacker is the peer (it holds the session keys: its own)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import msgpack

from overlay.media.stream import ByteStream, MediaStream, TcpByteStream
from overlay.media.transfer import ACK, END, HEADER, READY, FrameReader, frame
from overlay.media.transport_hooks import secure

#: what mallory puts in her refusal: terminal title and screen escapes, a fake "sent OK", a
#: right-to-left override and a C1 CSI, all of which a terminal would obey
EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[32msent OK\x1b[0m\r\n\u202eevil\x9b31m"


async def refuse_with_escapes(stream: ByteStream) -> None:
    """Mallory as a file's receiver: take the whole file, then refuse it with :data:`EVIL`
    as the error the sender prints."""
    reader = FrameReader(stream)
    kind, _ = await reader.next()
    assert kind == HEADER
    await stream.send(frame(READY, msgpack.packb({"offset": 0})))
    while (await reader.next())[0] != END:
        pass
    await stream.send(frame(ACK, msgpack.packb({"ok": False, "error": EVIL})))


class RecordingForwarder:
    """A TCP forwarder to ``target`` that keeps every byte it carried, per direction:
    ``up`` (client to target) and ``down`` (target to client)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = bytearray()
        self.down = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, 0)
        return host, self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       record: bytearray) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    record += data
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, self.up),
                             pump(up_reader, writer, self.down), return_exceptions=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Listener:
    """A TCP listener that hands out accepted connections as streams, and counts them."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[TcpByteStream] = asyncio.Queue()
        self.count = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> tuple[str, int]:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.count += 1
            await self.accepted.put(TcpByteStream(reader, writer))

        self.server = await asyncio.start_server(on_client, host, 0)
        return host, self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def secured_pair(host: str, shared: bytes, transcript: bytes
                       ) -> AsyncIterator[tuple[MediaStream, MediaStream]]:
    """(initiator, responder): one direct TCP path on ``host``, secured as the media service
    secures every path."""
    listener = Listener()
    addr = await listener.start(host)
    reader, writer = await asyncio.open_connection(*addr)
    raw_i = TcpByteStream(reader, writer)
    raw_r = await asyncio.wait_for(listener.accepted.get(), 5)
    a, b = await asyncio.gather(secure(raw_i, shared, transcript, True),
                                secure(raw_r, shared, transcript, False))
    try:
        yield a, b
    finally:
        for s in (a, b):
            with contextlib.suppress(Exception):
                await s.close()
        await listener.stop()


def frames_after(data: bytes, first_length: int, search: int = 64) -> list[bytes]:
    """The ``length(4) | ciphertext`` frames of a recorded secure-stream direction, found as
    an observer finds them: from the first ``first_length`` prefix in the first ``search``
    bytes (the confirmation frame has a known length), then by the length prefixes."""
    prefix = struct.pack(">I", first_length)
    start = data.find(prefix, 0, search)
    if start < 0:
        return []
    out = []
    while start + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, start)
        if start + 4 + length > len(data):
            break
        out.append(bytes(data[start:start + 4 + length]))
        start += 4 + length
    return out

"""0-RTT media paths in tests: a session's secret and transcript hash, a real 0-RTT QUIC
connection between two media sockets on loopback, and the caller-first securing on top."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from overlay.media.media_socket import MediaSocket
from overlay.media.quic.connect import quic_connect
from overlay.media.quic.stream import QuicByteStream
from overlay.media.quic.ticket import session_ticket
from overlay.media.secure_stream import InviteSalt, SecureByteStream, secure
from overlay.media.stream import ByteStream


def session_material() -> tuple[bytes, bytes]:
    """A fresh X25519-sized secret and a transcript hash."""
    return os.urandom(32), hashlib.blake2b(os.urandom(64), digest_size=32).digest()


async def caller_first(stream: ByteStream, shared: bytes, transcript: bytes, initiator: bool,
                       salts: InviteSalt) -> SecureByteStream:
    """The securing of a 0-RTT path (the caller writes first)."""
    return await secure(stream, shared, transcript, initiator, invite_salt=salts,
                        caller_first=True)


@asynccontextmanager
async def zero_rtt_quic(shared: bytes, transcript: bytes
                        ) -> AsyncIterator[tuple[QuicByteStream, asyncio.Future[QuicByteStream]]]:
    """A 0-RTT client on one loopback media socket (returned at once) and the server's
    accepting on another (its stream once the client's first flight arrived)."""
    ticket = session_ticket(shared, transcript)
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        server = asyncio.ensure_future(quic_connect(b, a.local_address, initiator=False,
                                                    session_ticket=ticket))
        await asyncio.sleep(0)
        client = await quic_connect(a, b.local_address, initiator=True, session_ticket=ticket,
                                    zero_rtt=True)
        yield client, server
    finally:
        await a.close()
        await b.close()

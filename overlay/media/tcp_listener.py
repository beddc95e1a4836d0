"""A client's TCP listener for direct media connections, and dialling one: a connection
starts with the 16-byte session id it belongs to (the listener routes it to that session's
race, and drops one for a session it does not expect).

Caller first. A caller whose callee lists :data:`TCP_FIRST_CAPABILITY` starts its dials to an
address where the callee's listener is known to be (:func:`.direct_paths.known_listener`)
with :func:`caller_first_preamble` instead: ``BLAKE2b-128(session id, person
"ovl-tcp-first-1")``. The callee's listener (only the callee's: a session's caller takes no
such dial) hands that connection to the session marked ``caller_first``, and the path is
secured caller first (:mod:`.secure_stream`): the caller's salt, confirmation and first
bytes leave with the connection instead of one round trip later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from overlay.media.stream import TcpByteStream

TCP_CONNECT_TIMEOUT_S = 3.0
#: a client's presence capability: its listener takes caller-first dials
TCP_FIRST_CAPABILITY = "media-tcp-first"
PREAMBLE_BYTES = 16
_TCP_FIRST_PERSON = b"ovl-tcp-first-1"


def caller_first_preamble(session_id: bytes) -> bytes:
    """The first 16 bytes of a caller-first dial in session ``session_id``."""
    return hashlib.blake2b(session_id, digest_size=PREAMBLE_BYTES,
                           person=_TCP_FIRST_PERSON).digest()


class MediaListener:
    """A client's TCP listener for direct connections; routes each incoming connection to
    the session whose id it starts with."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.waiting: dict[bytes, asyncio.Queue[TcpByteStream]] = {}
        #: caller-first preambles of the sessions that take them -> their session ids
        self.caller_first: dict[bytes, bytes] = {}

    async def start(self, host: str, port: int = 0) -> None:
        # SO_REUSEPORT: TCP hole punching connects from this port while it listens
        # (:mod:`overlay.media.tcp_punch_io`); Linux allows that only to the same user
        self.server = await asyncio.start_server(self._accept, host, port, reuse_port=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                preamble = await reader.readexactly(PREAMBLE_BYTES)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        session_id = self.caller_first.get(preamble, preamble)
        queue = self.waiting.get(session_id)
        if queue is None:
            writer.close()  # not a session we expect: drop without a word
            return
        queue.put_nowait(TcpByteStream(reader, writer,
                                       caller_first=session_id != preamble))

    def expect(self, session_id: bytes, caller_first: bool = False
               ) -> asyncio.Queue[TcpByteStream]:
        """The queue of connections for ``session_id``; with ``caller_first`` (a callee's
        session) also the caller's dials that start with :func:`caller_first_preamble`."""
        if caller_first:
            self.caller_first[caller_first_preamble(session_id)] = session_id
        return self.waiting.setdefault(session_id, asyncio.Queue())

    def forget(self, session_id: bytes) -> None:
        self.waiting.pop(session_id, None)
        self.caller_first.pop(caller_first_preamble(session_id), None)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


async def dial_tcp(host: str, port: int, session_id: bytes,
                   caller_first: bool = False) -> TcpByteStream:
    """Connect to a peer's listener in session ``session_id``; ``caller_first``: the
    caller's dial that the callee takes caller first (see the module's docstring)."""
    async with asyncio.timeout(TCP_CONNECT_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, port)
    writer.write(caller_first_preamble(session_id) if caller_first else session_id)
    return TcpByteStream(reader, writer, caller_first=caller_first)

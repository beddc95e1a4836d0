"""A relay that ends a mirror (its duration limit: it closes both connections, with no
authenticated CLOSE), and later the path in use failing, is a lost path, not a hang-up: the
call waits for another path (issue 15). Real loopback TCP under end-to-end secured streams,
as every media path is: only the peer's authenticated CLOSE ends a secured stream cleanly
(:class:`~overlay.media.secure_stream.SecureByteStream`); a relay's close (or its
``RelayLimitReached``) is a failure, so the mirror is no sign of a hang-up. On raw streams
a relay's close would read as the peer's and the call would end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from contextlib import AsyncExitStack

from overlay.call.session import CallSession
from overlay.call.stream_io import LOST_GRACE_S, StreamCall
from overlay.media.secure_stream import SecureByteStream, secure
from tests.unit.test_call_mirror_hangup import tcp_pair, until
from tests.unit.test_media_transports import session_material

SECRET = bytes(range(32))
CALL_ID = bytes(8)


async def secured_pair(stack: AsyncExitStack) -> tuple[SecureByteStream, SecureByteStream]:
    raw_a, raw_b = await tcp_pair(stack)
    _, shared, transcript = session_material()
    a, b = await asyncio.gather(secure(raw_a, shared, transcript, True),
                                secure(raw_b, shared, transcript, False))
    return a, b


async def test_a_mirror_the_relay_ended_is_no_hang_up() -> None:
    async with AsyncExitStack() as stack:
        a_main, b_main = await secured_pair(stack)
        a_mirror, b_mirror = await secured_pair(stack)
        now = time.monotonic()
        caller = StreamCall(CallSession(SECRET, CALL_ID, caller=True, now=now,
                                        path="direct-tcp"), a_main, LOST_GRACE_S)
        callee = StreamCall(CallSession(SECRET, CALL_ID, caller=False, now=now,
                                        path="direct-tcp"), b_main, LOST_GRACE_S)
        caller.add_mirror(a_mirror)
        callee.add_mirror(b_mirror)
        runs = asyncio.ensure_future(asyncio.gather(caller.run(30.0), callee.run(30.0)))
        await until(lambda: callee.session.recv.received >= 25, 5.0)
        for raw in (a_mirror.raw, b_mirror.raw):  # the relay ends the mirror's connections
            raw.writer.transport.close()  # type: ignore[attr-defined]
        await until(lambda: all(m.failed for m in callee.mirrors + caller.mirrors), 5.0)
        received = callee.session.recv.received
        await until(lambda: callee.session.recv.received >= received + 25, 5.0)  # goes on
        sock = a_main.raw.writer.get_extra_info("socket")  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a_main.raw.writer.transport.abort()  # type: ignore[attr-defined]
        await until(lambda: callee.path_lost.is_set(), 5.0)
        assert not callee.peer_ended.is_set() and not runs.done()  # waits for another path
        runs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runs

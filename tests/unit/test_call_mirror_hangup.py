"""A caller hanging up a mirrored call (issue 15): it closes the mirror, then the TCP
connection in use, which the kernel resets (frames still unread). The callee must end the
call at once as hung up: not take the reset for a lost path and move onto the mirror the
caller already closed (it did, and ran on alone until a send failed and the path-lost
wait ran out, its lines saying ``relay``). Real loopback TCP connections."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from contextlib import AsyncExitStack

from overlay.call.session import CallSession
from overlay.call.stream_io import LOST_GRACE_S, StreamCall
from overlay.media.stream import TcpByteStream

SECRET = bytes(range(32))
CALL_ID = bytes(8)


async def tcp_pair(stack: AsyncExitStack) -> tuple[TcpByteStream, TcpByteStream]:
    accepted: asyncio.Future[TcpByteStream] = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(TcpByteStream(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    port = server.sockets[0].getsockname()[1]
    dialed = TcpByteStream(*await asyncio.open_connection("127.0.0.1", port))
    answered = await accepted
    for stream in (dialed, answered):
        stack.push_async_callback(stream.close)
    return dialed, answered


async def until(condition: object, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_callee_ends_at_once_when_the_caller_hangs_up_a_mirrored_call() -> None:
    async with AsyncExitStack() as stack:
        a_main, b_main = await tcp_pair(stack)
        a_mirror, b_mirror = await tcp_pair(stack)
        now = time.monotonic()
        caller = StreamCall(CallSession(SECRET, CALL_ID, caller=True, now=now,
                                        path="direct-tcp"), a_main)
        callee = StreamCall(CallSession(SECRET, CALL_ID, caller=False, now=now,
                                        path="direct-tcp"), b_main, LOST_GRACE_S)
        caller.add_mirror(a_mirror)
        callee.add_mirror(b_mirror)
        callee_run = asyncio.ensure_future(callee.run(None))
        await caller.run(1.0)
        assert callee.session.recv.received > 0
        await a_mirror.close()  # the caller closes the mirror first ...
        await until(lambda: callee._readers[0].done(), 5.0)  # its reader saw the end
        sock = a_main.writer.get_extra_info("socket")  # ... then the path in use: reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a_main.writer.transport.abort()
        hung_up = time.monotonic()
        final = await asyncio.wait_for(callee_run, LOST_GRACE_S + 5)
        took = time.monotonic() - hung_up
    assert took < 1.0, took  # not after the path-lost wait
    assert callee.peer_ended.is_set() and not callee.path_lost.is_set()
    assert final.path == "direct-tcp" and callee.stream is b_main

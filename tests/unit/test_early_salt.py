"""The caller's listener sends its path salt on the callee's connection the moment it
arrives, before the caller holds the answer's keys: the callee's confirmation is then on its
way before the caller knows the keys, and the caller's handshake completes in less than a
round trip once it does (it took a round trip more). Real TCP on loopback, through a proxy
that delays every byte by half a round trip each way."""

from __future__ import annotations

import asyncio
import os

from overlay.media.secure_stream import PATH_SALT_BYTES, secure
from overlay.media.stream import TcpByteStream
from overlay.media.tcp_listener import MediaListener, dial_tcp
from tests.helpers.latency_proxy import LatencyProxy
from tests.helpers.netutil import loopback_ips

RTT_S = 1.6
PROXY_PORT = 45123


class SendLog:
    """The callee's raw stream, noting each write (its salt, then its confirmation)."""

    def __init__(self, raw: TcpByteStream) -> None:
        self.raw = raw
        self.path = raw.path
        self.relay = raw.relay
        self.writes: list[bytes] = []
        self.confirmed = asyncio.Event()

    async def send(self, data: bytes) -> None:
        await self.raw.send(data)
        self.writes.append(data)
        if len(self.writes) == 2:
            self.confirmed.set()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        return await self.raw.recv(max_bytes)

    async def close(self) -> None:
        await self.raw.close()


async def test_the_callee_confirms_before_the_caller_has_the_keys() -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    proxy = await LatencyProxy((ip, PROXY_PORT), (ip, listener.port), lambda: (),
                               lambda _pid: RTT_S).start()
    session_id, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    queue = listener.expect(session_id, early_salt=True)
    callee_side = None
    try:
        callee_raw = SendLog(await dial_tcp(ip, PROXY_PORT, session_id))
        callee = asyncio.ensure_future(secure(callee_raw, shared, transcript, initiator=False,
                                              timeout=4 * RTT_S))
        caller_raw = await asyncio.wait_for(queue.get(), 2 * RTT_S)
        assert caller_raw.early_salt is not None and len(caller_raw.early_salt) == PATH_SALT_BYTES
        # the caller has not started its handshake (no answer yet): the callee confirms anyway
        await asyncio.wait_for(callee_raw.confirmed.wait(), 2 * RTT_S)
        assert not callee.done()
        # the answer arrives: the callee's confirmation is at most half a round trip away
        loop = asyncio.get_running_loop()
        began = loop.time()
        caller_side = await secure(caller_raw, shared, transcript, initiator=True,
                                   timeout=4 * RTT_S, sent_salt=caller_raw.early_salt)
        assert loop.time() - began < 0.8 * RTT_S
        callee_side = await asyncio.wait_for(callee, 2 * RTT_S)
        # one path, the same keys on both ends: data flows both ways
        await caller_side.send(b"first byte")
        assert await asyncio.wait_for(callee_side.recv(), 2 * RTT_S) == b"first byte"
        await callee_side.send(b"back")
        assert await asyncio.wait_for(caller_side.recv(), 2 * RTT_S) == b"back"
        await caller_side.close()
    finally:
        if callee_side is not None:
            await callee_side.close()
        listener.forget(session_id)
        await proxy.stop()
        await listener.stop()


async def test_a_session_without_early_salt_gets_no_salt_from_the_listener() -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    session_id, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    queue = listener.expect(session_id)
    try:
        callee_raw = await dial_tcp(ip, listener.port, session_id)
        callee = asyncio.ensure_future(secure(callee_raw, shared, transcript, initiator=False))
        caller_raw = await asyncio.wait_for(queue.get(), 5)
        assert caller_raw.early_salt is None
        caller_side = await secure(caller_raw, shared, transcript, initiator=True)
        callee_side = await asyncio.wait_for(callee, 5)
        await caller_side.send(b"x")
        assert await asyncio.wait_for(callee_side.recv(), 5) == b"x"
        await caller_side.close()
        await callee_side.close()
    finally:
        listener.forget(session_id)
        await listener.stop()

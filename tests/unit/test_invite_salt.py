"""The caller's path salt in the signed invite (:class:`InviteSalt`): the callee sends its
salt and its confirmation the moment its connection is up, before anything from the caller
arrives; the caller's handshake then completes as soon as it runs (it took a round trip
more). Real TCP on loopback, through a proxy that delays every byte by half a round trip
each way. And a caller whose salt is not the derived one is refused by the callee."""

from __future__ import annotations

import asyncio
import os

import pytest

from overlay.media.secure_stream import (
    InviteSalt,
    SecureStreamError,
    new_path_salt,
    secure,
)
from overlay.media.stream import TcpByteStream
from overlay.media.tcp_listener import MediaListener, dial_tcp
from tests.helpers.latency_proxy import LatencyProxy
from tests.helpers.netutil import loopback_ips

RTT_S = 1.6
PROXY_PORT = 45123


class SendLog:
    """The callee's raw stream, noting each write (its salt with its confirmation)."""

    def __init__(self, raw: TcpByteStream) -> None:
        self.raw = raw
        self.path = raw.path
        self.relay = raw.relay
        self.writes: list[bytes] = []
        self.confirmed = asyncio.Event()

    async def send(self, data: bytes) -> None:
        await self.raw.send(data)
        self.writes.append(data)
        self.confirmed.set()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        return await self.raw.recv(max_bytes)

    async def close(self) -> None:
        await self.raw.close()


async def test_the_callee_confirms_on_connecting() -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    proxy = await LatencyProxy((ip, PROXY_PORT), (ip, listener.port), lambda: (),
                               lambda _pid: RTT_S).start()
    session_id, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    salt = new_path_salt()
    queue = listener.expect(session_id)
    callee_side = None
    try:
        callee_raw = SendLog(await dial_tcp(ip, PROXY_PORT, session_id))
        callee = asyncio.ensure_future(secure(callee_raw, shared, transcript, initiator=False,
                                              timeout=4 * RTT_S, invite_salt=InviteSalt(salt)))
        # nothing came from the caller yet: the callee's salt and confirmation are on the way
        await asyncio.wait_for(callee_raw.confirmed.wait(), RTT_S / 4)
        assert len(callee_raw.writes) == 1 and len(callee_raw.writes[0]) > 16
        caller_raw = await asyncio.wait_for(queue.get(), 2 * RTT_S)
        # the caller runs its handshake once the callee's bytes are here: no round trip
        loop = asyncio.get_running_loop()
        began = loop.time()
        caller_side = await secure(caller_raw, shared, transcript, initiator=True,
                                   timeout=4 * RTT_S, invite_salt=InviteSalt(salt))
        assert loop.time() - began < 0.4 * RTT_S
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


async def test_a_caller_salt_not_derived_from_the_invite_is_refused() -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    session_id, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    queue = listener.expect(session_id)
    try:
        callee_raw = await dial_tcp(ip, listener.port, session_id)
        callee = asyncio.ensure_future(secure(callee_raw, shared, transcript, initiator=False,
                                              timeout=5, invite_salt=InviteSalt(new_path_salt())))
        caller_raw = await asyncio.wait_for(queue.get(), 5)
        # a caller with another invite's salt
        caller = asyncio.ensure_future(secure(caller_raw, shared, transcript, initiator=True,
                                              timeout=5, invite_salt=InviteSalt(new_path_salt())))
        with pytest.raises(SecureStreamError) as refused:
            await callee
        assert refused.value.reason == "bad_salt"
        with pytest.raises(SecureStreamError):
            await caller
    finally:
        listener.forget(session_id)
        await listener.stop()

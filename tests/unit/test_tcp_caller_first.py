"""Caller-first TCP dials (:mod:`overlay.media.tcp_listener`): a caller whose callee takes
them starts its dial with the caller-first preamble, and its salt, confirmation and first
bytes leave with the connection. Real TCP on loopback, through a proxy that delays every
byte by half a round trip each way: the callee has the caller's first bytes half a round
trip after the caller connected (it took a round trip and a half, the callee speaking
first). And which dials the listener takes caller first."""

from __future__ import annotations

import asyncio
import os

from overlay.media.connect import ZERO_RTT_SENT, completion
from overlay.media.secure_stream import InviteSalt, new_path_salt
from overlay.media.tcp_listener import MediaListener, caller_first_preamble, dial_tcp
from overlay.media.transport_hooks import secure
from tests.helpers.latency_proxy import LatencyProxy
from tests.helpers.netutil import loopback_ips

RTT_S = 1.6


async def test_the_callers_first_bytes_reach_the_callee_half_a_round_trip_after_it_connects(
) -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    proxy = await LatencyProxy((ip, 0), (ip, listener.port), lambda: (),
                               lambda _pid: RTT_S).start()
    session_id, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    salt = new_path_salt()
    queue = listener.expect(session_id, caller_first=True)  # the callee's session
    loop = asyncio.get_running_loop()
    caller_side = callee_side = None
    try:
        began = loop.time()
        caller_raw = await dial_tcp(ip, proxy.listen[1], session_id, caller_first=True)
        caller_side = await secure(caller_raw, shared, transcript, True, InviteSalt(salt))
        # the caller did not wait for the callee: its bytes go with its first flight
        assert loop.time() - began < 0.25 * RTT_S
        assert completion(caller_side) == ZERO_RTT_SENT
        await caller_side.send(b"first byte")

        callee_raw = await asyncio.wait_for(queue.get(), 2 * RTT_S)
        assert callee_raw.caller_first
        callee_side = await secure(callee_raw, shared, transcript, False, InviteSalt(salt))
        assert await asyncio.wait_for(callee_side.recv(), 2 * RTT_S) == b"first byte"
        # half a round trip on the way there (the callee speaking first: a round trip more)
        assert loop.time() - began < 1.0 * RTT_S
        # and the callee's salt and confirmation verify at the caller as they arrive
        await callee_side.send(b"back")
        assert await asyncio.wait_for(caller_side.recv(), 2 * RTT_S) == b"back"
        assert caller_side.framer.confirmed
    finally:
        for side in (caller_side, callee_side):
            if side is not None:
                await side.close()
        listener.forget(session_id)
        await proxy.stop()
        await listener.stop()


async def test_the_listener_takes_a_caller_first_dial_only_in_a_callees_session() -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    callee_session, caller_session = os.urandom(16), os.urandom(16)
    as_callee = listener.expect(callee_session, caller_first=True)
    as_caller = listener.expect(caller_session)
    opened = []
    try:
        plain = await dial_tcp(ip, listener.port, callee_session)
        first = await dial_tcp(ip, listener.port, callee_session, caller_first=True)
        opened += [plain, first]
        routed = [await asyncio.wait_for(as_callee.get(), 5) for _ in range(2)]
        assert sorted(r.caller_first for r in routed) == [False, True]
        opened += routed
        # a caller's session takes no caller-first dial: it is dropped without a word
        refused = await dial_tcp(ip, listener.port, caller_session, caller_first=True)
        opened.append(refused)
        assert await asyncio.wait_for(refused.reader.read(), 5) == b""
        assert as_caller.empty()
        # nor does a session once forgotten
        listener.forget(callee_session)
        late = await dial_tcp(ip, listener.port, callee_session, caller_first=True)
        opened.append(late)
        assert await asyncio.wait_for(late.reader.read(), 5) == b""
        assert listener.caller_first == {}
        assert caller_first_preamble(callee_session) != callee_session
    finally:
        for stream in opened:
            await stream.close()
        await listener.stop()

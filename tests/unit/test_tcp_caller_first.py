"""Caller-first TCP dials (:mod:`overlay.media.tcp_listener`): a caller whose callee takes
them starts its dial with the caller-first preamble, and its salt, confirmation and first
bytes leave with the connection. Real TCP on loopback, through a proxy that delays every
byte by half a round trip each way: the callee has the caller's first bytes half a round
trip after the caller connected (it took a round trip and a half, the callee speaking
first). Which dials the listener takes caller first; and caller-first TCP punches."""

from __future__ import annotations

import asyncio
import os

from overlay.media.connect import ZERO_RTT_SENT, completion
from overlay.media.secure_stream import InviteSalt, new_path_salt
from overlay.media.tcp_listener import MediaListener, caller_first_preamble, dial_tcp
from overlay.media.tcp_punch_io import punch_tcp
from overlay.media.transport_hooks import caller_first, secure
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


async def _punching_peer(first_words: bytes) -> tuple[asyncio.Server, asyncio.Queue[bytes]]:
    """A stand-in for the peer's punching socket (the far end of a simultaneous open): it
    writes ``first_words`` (its session id, and what follows) and hands on the 16 bytes
    that came first."""
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(first_words)
        heard.put_nowait(await reader.readexactly(16))
        await reader.read()
        writer.close()

    return await asyncio.start_server(on_client, "127.0.0.1", 0), heard


async def test_a_caller_first_punch_returns_as_it_connects_and_drops_the_peers_id() -> None:
    session = os.urandom(16)
    listener = MediaListener()
    await listener.start("127.0.0.1", 0)
    server, heard = await _punching_peer(session + b"the callee's salt...")
    try:
        stream = await punch_tcp(listener.port, "127.0.0.1", server.sockets[0].getsockname()[1],
                                 session, sends_first=True)
        assert caller_first(stream)
        assert await asyncio.wait_for(heard.get(), 5) == caller_first_preamble(session)
        # the peer's session id is not part of the path's bytes
        assert await asyncio.wait_for(stream.recv(), 5) == b"the callee's salt..."
        assert stream.path == "tcp-punch"
        await stream.close()
    finally:
        server.close()
        await listener.stop()


async def test_the_callee_punch_takes_the_callers_preamble_the_caller_punch_does_not() -> None:
    session = os.urandom(16)
    callee, caller = MediaListener(), MediaListener()
    await callee.start("127.0.0.1", 0)
    await caller.start("127.0.0.1", 0)
    server, _ = await _punching_peer(caller_first_preamble(session))
    port = server.sockets[0].getsockname()[1]
    try:
        as_callee = await punch_tcp(callee.port, "127.0.0.1", port, session, takes_first=True)
        assert caller_first(as_callee) and as_callee.path == "tcp-punch"
        await as_callee.close()
        # a caller's punch does not take a peer that claims to send first: not its callee's
        # punching socket (the 16 bytes go back to secure, which finds no session keys)
        as_caller = await punch_tcp(caller.port, "127.0.0.1", port, session)
        assert not caller_first(as_caller) and as_caller.path == "direct-tcp"
        await as_caller.close()
    finally:
        server.close()
        await callee.stop()
        await caller.stop()


async def test_a_caller_first_punch_that_reaches_the_callees_listener_authenticates() -> None:
    """The callee's punching socket is gone: the caller's SYN reaches its listener, which
    takes the preamble as a caller-first dial; both ends secure that one connection."""
    session, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    salt = new_path_salt()
    ours, callee = MediaListener(), MediaListener()
    await ours.start("127.0.0.1", 0)
    await callee.start("127.0.0.1", 0)
    accept = callee.expect(session, caller_first=True)
    try:
        raw = await punch_tcp(ours.port, "127.0.0.1", callee.port, session, sends_first=True)
        caller_side = await secure(raw, shared, transcript, True, InviteSalt(salt))
        assert completion(caller_side) == ZERO_RTT_SENT
        await caller_side.send(b"via the listener")
        callee_raw = await asyncio.wait_for(accept.get(), 5)
        callee_side = await secure(callee_raw, shared, transcript, False, InviteSalt(salt))
        assert await asyncio.wait_for(callee_side.recv(), 5) == b"via the listener"
        await callee_side.send(b"back")
        assert await asyncio.wait_for(caller_side.recv(), 5) == b"back"
        assert raw.path == "direct-tcp"
        await caller_side.close()
        await callee_side.close()
    finally:
        await ours.stop()
        await callee.stop()

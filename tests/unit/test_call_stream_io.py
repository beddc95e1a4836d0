"""A call over a media path (``call/stream_io``), on real loopback sockets: on a punched UDP
path its frames go as QUIC DATAGRAM frames beside the stream; on TCP, length-prefixed on the
stream. Both ways: every frame arrives (at most a loop stall's worth late), both sides count
the other's frames."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from overlay.call.frames import new_call_id
from overlay.call.session import CallSession, CallStats
from overlay.call.stream_io import FrameStream, StreamCall
from overlay.media.connect import Pushback
from overlay.media.media_socket import MediaSocket
from overlay.media.quic.connect import udp_path
from overlay.media.quic.stream import OwningQuicStream
from overlay.media.secure_stream import SecureByteStream, secure
from overlay.media.stream import TcpByteStream
from tests.unit.test_media_transports import session_material

SECONDS = 2.0


async def call_both_ways(sa: SecureByteStream, sb: FrameStream
                         ) -> tuple[StreamCall, StreamCall, CallStats, CallStats]:
    secret, call_id = os.urandom(32), new_call_id()
    loop = asyncio.get_running_loop()
    caller = StreamCall(CallSession(secret, call_id, caller=True, now=loop.time(),
                                    path=sa.path), sa)
    callee = StreamCall(CallSession(secret, call_id, caller=False, now=loop.time(),
                                    path=sb.path), sb)

    async def caller_side() -> CallStats:
        try:
            return await caller.run(SECONDS)
        finally:
            await sa.close()  # the callee's side ends with the stream

    ours, theirs = await asyncio.gather(caller_side(), callee.run(30.0))
    return caller, callee, ours, theirs


#: both ends, QUIC and the jitter buffers share one event loop here; on a loaded runner a
#: stall of that loop longer than the buffer's delay makes a frame late (seen: 1 of 99)
MAX_LATE_PCT = 2.0


def assert_clean(caller: StreamCall, callee: StreamCall, ours: CallStats,
                 theirs: CallStats) -> None:
    for stats in (ours, theirs):
        assert stats.final and stats.late_pct <= MAX_LATE_PCT, stats
    # the path loses nothing: what a side counts as lost are only the slots its peer never
    # sent (a stall of the shared loop longer than MAX_CATCH_UP frames skips their sequence
    # numbers; seen once in a loaded CI run: 4 of 98)
    for receiver, sender in ((caller, callee), (callee, caller)):
        never_sent = sender.session.send.skipped + sender.session.send.dropped
        assert receiver.session.buffer.lost_before <= never_sent, (
            receiver.session.buffer.stats, sender.session.send)
    # 50 frames a second each way; the callee's side also ran while the caller closed
    assert ours.frames_received >= 0.9 * SECONDS * 50
    assert theirs.frames_received >= ours.frames_sent - 3
    assert theirs.seconds < SECONDS + 5  # it ended when the caller did, not at 30 s


async def test_call_on_a_punched_udp_path_goes_as_quic_datagrams() -> None:
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        sid, secret, transcript = session_material()
        qa, qb = await asyncio.gather(
            udp_path(a, sid, secret, transcript, True, [a.local_address], [b.local_address]),
            udp_path(b, sid, secret, transcript, False, [b.local_address], [a.local_address]))
        sa, sb = await asyncio.gather(secure(qa, secret, transcript, True),
                                      secure(qb, secret, transcript, False))
        caller, callee, ours, theirs = await call_both_ways(sa, sb)
        assert caller.mode == callee.mode == "datagram"
        assert caller.stream_frames == callee.stream_frames == 0
        assert ours.path == "udp-punch"
        assert_clean(caller, callee, ours, theirs)
    finally:
        await a.close()
        await b.close()


async def test_call_on_tcp_goes_on_the_stream() -> None:
    accepted: asyncio.Future[TcpByteStream] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(TcpByteStream(reader, writer))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        ta = TcpByteStream(*await asyncio.open_connection("127.0.0.1", port))
        tb = await accepted
        _, secret, transcript = session_material()
        start: Callable[..., Awaitable[SecureByteStream]] = secure
        sa, sb = await asyncio.gather(start(ta, secret, transcript, True),
                                      start(tb, secret, transcript, False))
        caller, callee, ours, theirs = await call_both_ways(sa, sb)
        assert caller.mode == callee.mode == "stream"
        assert callee.stream_frames == theirs.frames_received
        assert ours.path == "direct-tcp"
        assert_clean(caller, callee, ours, theirs)
    finally:
        server.close()
        await server.wait_closed()


async def test_call_through_the_race_wrappers_still_goes_as_quic_datagrams() -> None:
    """What the path race hands the callee is wrapped (``Pushback`` around the secured
    stream; on a birthday pair's hard side the QUIC stream is in an ``OwningQuicStream``):
    the call still finds the QUIC stream and both sides send and take datagrams. (Before, the
    callee found no datagram carrier: it sent on the stream and dropped every datagram the
    caller sent, so the caller's frames never reached it.)"""
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        sid, secret, transcript = session_material()
        qa, qb = await asyncio.gather(
            udp_path(a, sid, secret, transcript, True, [a.local_address], [b.local_address]),
            udp_path(b, sid, secret, transcript, False, [b.local_address], [a.local_address]))
        sa, sb = await asyncio.gather(
            secure(qa, secret, transcript, True),
            secure(OwningQuicStream(qb, b.close), secret, transcript, False))
        caller, callee, ours, theirs = await call_both_ways(sa, Pushback(sb, b""))
        assert caller.mode == callee.mode == "datagram"
        assert caller.stream_frames == callee.stream_frames == 0
        assert_clean(caller, callee, ours, theirs)
    finally:
        await a.close()
        await b.close()

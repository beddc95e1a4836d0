"""Call frames over TCP: framing, and the sender dropping rather than queueing, on a real
loopback TCP connection whose reader stops reading."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from overlay.call.errors import BadFrame
from overlay.call.session import CallSession
from overlay.call.stream_frames import SendGate, StreamFrameDecoder, encode_stream_frame
from tests.helpers.netutil import loopback_ips, wait_for

SECRET, CALL_ID = os.urandom(32), os.urandom(8)


def test_frames_survive_any_split() -> None:
    frames = [bytes([i]) * (40 + i * 7) for i in range(30)]
    wire = b"".join(encode_stream_frame(f) for f in frames)
    for step in (1, 2, 3, 41, 1000):
        dec = StreamFrameDecoder()
        got = [f for i in range(0, len(wire), step) for f in dec.feed(wire[i:i + step])]
        assert got == frames


@pytest.mark.parametrize("length", [0, 39, 1201, 65535])
def test_bad_lengths_are_refused_before_buffering(length: int) -> None:
    with pytest.raises(BadFrame):
        StreamFrameDecoder().feed(length.to_bytes(2, "big"))


async def test_sender_drops_instead_of_queueing_on_a_stalled_stream() -> None:
    """The receiver stops reading for 2 s (small kernel buffers, as on a congested path): the
    sender's backlog stays bounded (frames dropped and counted); when it reads again, the
    frames that went out arrive and the call goes on."""
    host, = loopback_ips(1)
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind((host, 0))
    listener.listen()
    listener.setblocking(False)
    sender = socket.socket()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sender.setblocking(False)
    await loop.sock_connect(sender, listener.getsockname())
    conn, _ = await loop.sock_accept(listener)
    received: list[bytes] = []
    reading = asyncio.Event()

    async def receive() -> None:
        dec = StreamFrameDecoder()
        while True:
            await reading.wait()
            data = await loop.sock_recv(conn, 4096)
            if not data:
                return
            received.extend(dec.feed(data))

    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, sender)
    transport.set_write_buffer_limits(high=0)
    receiver = asyncio.ensure_future(receive())
    now = time.monotonic()
    call = CallSession(SECRET, CALL_ID, caller=True, now=now, path="relay-tcp",
                       bitrate_bps=64_000)
    gate = SendGate(call.size + 40)
    peak = 0
    try:
        while (t := time.monotonic()) < now + 4.0:
            if t > now + 2.0:
                reading.set()
            for frame in call.timer(t):
                buffered = transport.get_write_buffer_size()
                peak = max(peak, buffered)
                if gate.admit(buffered):
                    transport.write(encode_stream_frame(frame))
                else:
                    call.sender_dropped()
            await asyncio.sleep(0.02)
        sent = gate.sent
        await wait_for(lambda: len(received) == sent, 5.0)
    finally:
        receiver.cancel()
        transport.close()
        conn.close()
        listener.close()
    assert gate.dropped > 0 and call.send.dropped == gate.dropped
    assert peak <= gate.limit + call.size + 42  # never more than the gate's backlog
    assert gate.sent + gate.dropped == call.send.sent

"""The callee, as QUIC server, now writes its path salt and ``CONFIRM`` as 0.5-RTT data with
its handshake flight, before any client has proven anything. An attacker with its own raw
UDP socket and a genuine QUIC client (aioquic, its own keys) tries to collect them: from an
address that is not the peer's it gets no answer at all, and an Initial that never goes on
to complete the handshake leaves the server a stream that fails within the connect timeout,
so nothing is ever confirmed on it."""

from __future__ import annotations

import asyncio
import time

import pytest
from aioquic.quic.connection import QuicConnection

from overlay.media.media_socket import MediaSocket
from overlay.media.quic.connect import quic_connect
from overlay.media.quic.core import QuicPathError, QuicStreamCore, configuration
from tests.helpers.netutil import udp_socket


def attacker_initial(to: tuple[str, int]) -> list[bytes]:
    client = QuicStreamCore(QuicConnection(configuration=configuration(True)), is_client=True)
    client.connect(to, time.monotonic())
    return [data for data, _ in client.datagrams_to_send(time.monotonic())]


async def test_an_initial_from_another_address_gets_nothing() -> None:
    callee = await MediaSocket.open("127.0.0.1", 0)
    peer = await MediaSocket.open("127.0.0.1", 0)  # the real caller: it stays silent here
    raw = udp_socket()
    try:
        accepting = asyncio.ensure_future(
            quic_connect(callee, peer.local_address, initiator=False, timeout=1.0))
        await asyncio.sleep(0)
        for data in attacker_initial(callee.local_address):
            raw.sendto(data, callee.local_address)
        with pytest.raises(QuicPathError):
            await accepting
        with pytest.raises(BlockingIOError):
            raw.recvfrom(65536)  # no server flight, no 0.5-RTT bytes, not even a reply
    finally:
        raw.close()
        await callee.close()
        await peer.close()


async def test_an_initial_that_never_completes_leaves_a_stream_that_fails() -> None:
    callee = await MediaSocket.open("127.0.0.1", 0)
    raw = udp_socket()
    try:
        accepting = asyncio.ensure_future(
            quic_connect(callee, raw.getsockname(), initiator=False, timeout=1.0))
        await asyncio.sleep(0)
        for data in attacker_initial(callee.local_address):
            raw.sendto(data, callee.local_address)
        stream = await asyncio.wait_for(accepting, 2.0)  # the server opened its stream
        started = time.monotonic()
        with pytest.raises(QuicPathError, match="no QUIC handshake"):
            await stream.recv()  # the attacker never finishes: no byte, the stream fails
        assert time.monotonic() - started < 2.0
        assert not stream.core.handshake_done
    finally:
        raw.close()
        await callee.close()

"""How a direct TCP path ends (:class:`overlay.media.stream.TcpByteStream`), on real loopback
connections, with the kernel's own socket table (``/proc/net/tcp``) as the witness.

A TCP hole punch connects from the media listener's port to the peer's every time, so a
4-tuple left in TIME_WAIT by the last connection between two peers refuses the next punch
for a minute (``EADDRNOTAVAIL``; seen in the lab as a tcp-only pair's second send going
through a relay). The side that closes second therefore resets the connection, and so does a
discard: neither side keeps the 4-tuple. What the first closer sent is still read in full.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from overlay.media.stream import TcpByteStream, discard, peer_closed_first
from tests.helpers.stream_pairs import tcp_stream_pair

#: ``/proc/net/tcp`` state codes
_TIME_WAIT, _FIN_WAIT2 = "06", "05"


def ports(stream: TcpByteStream) -> tuple[int, int]:
    local = stream.writer.get_extra_info("sockname")
    peer = stream.writer.get_extra_info("peername")
    return int(local[1]), int(peer[1])


def kernel_states(a: int, b: int) -> list[str]:
    """The states of the kernel's sockets between loopback ports ``a`` and ``b`` (either
    way round; TIME_WAIT ones included, which no process holds)."""
    states = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        pair = {int(local.split(":")[1], 16), int(remote.split(":")[1], 16)}
        if pair == {a, b}:
            states.append(state)
    return states


async def settled_states(a: int, b: int) -> list[str]:
    """The sockets between ``a`` and ``b`` once the closing handshake has run its course on
    loopback (a FIN or a reset crosses it in microseconds; we give the event loop and the
    kernel a few turns, and stop as soon as only TIME_WAIT or nothing is left)."""
    states = kernel_states(a, b)
    for _ in range(200):
        if all(s == _TIME_WAIT for s in states):
            break
        await asyncio.sleep(0.005)
        states = kernel_states(a, b)
    return states


async def test_the_second_closer_resets_and_no_time_wait_is_left() -> None:
    first, second = await tcp_stream_pair()
    a, b = ports(first)
    data = os.urandom(200_000)
    await first.send(data)
    await first.close()  # FIN: the first closer would keep the 4-tuple in TIME_WAIT
    received = bytearray()
    while chunk := await second.recv():
        received += chunk
    assert bytes(received) == data  # everything the first closer sent was read
    assert peer_closed_first(second.writer)
    await second.close()
    states = await settled_states(a, b)
    assert _TIME_WAIT not in states and _FIN_WAIT2 not in states, states


async def test_a_discarded_connection_leaves_no_time_wait() -> None:
    dialled, accepted = await tcp_stream_pair()
    a, b = ports(dialled)
    await dialled.send(b"x" * 1000)
    await discard(dialled)
    try:
        while await accepted.recv():
            pass
    except Exception:
        pass  # a reset, not an end of stream: the far end learns the path is gone
    await accepted.close()
    states = await settled_states(a, b)
    assert _TIME_WAIT not in states, states


async def test_the_first_closer_still_closes_gracefully() -> None:
    first, second = await tcp_stream_pair()
    assert not peer_closed_first(first.writer)
    await first.send(b"last words")
    await first.close()
    assert await second.recv() == b"last words"
    assert await second.recv() == b""  # a clean end of stream, not a reset


def test_peer_closed_first_is_false_for_a_socket_that_is_not_tcp() -> None:
    class Writer:
        def get_extra_info(self, name: str) -> socket.socket:
            return udp

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert not peer_closed_first(Writer())  # type: ignore[arg-type]

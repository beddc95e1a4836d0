"""Birthday punching's asyncio driver (overlay.media.birthday_io) on real loopback sockets: the
hard side's extra sockets are closed on every exit path (won by an extra socket, won by the
media socket, failed, cancelled), and QUIC runs on the socket that won.

On loopback there is no NAT, so the easy side here is simple punching (its puncher answers
whatever valid probe reaches it); the hard side's media socket is closed in the test where an
extra socket must win (its probes then go nowhere)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from overlay.media.birthday import HARD_SOCKETS
from overlay.media.birthday_io import (
    MAX_EXTRA_TOTAL,
    ExtraSockets,
    birthday_path,
    extra_socket_allowance,
)
from overlay.media.media_socket import MediaSocket
from overlay.media.punch import PunchFailed
from overlay.media.quic.connect import udp_path
from overlay.media.quic.stream import OwningQuicStream

SHARED, TRANSCRIPT = os.urandom(32), os.urandom(32)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def dead_port() -> int:
    """A loopback UDP port nobody listens on."""
    probe = await MediaSocket.open("127.0.0.1", 0)
    port = probe.local_address[1]
    await probe.close()
    return port


async def exchange(hard_media: MediaSocket, sockets: int) -> tuple[object, int]:
    """The hard side (responder) birthday-punches an easy side doing simple punching; both
    run QUIC and move a few bytes. The hard side's stream, and its open fds meanwhile."""
    easy = await MediaSocket.open("127.0.0.1", 0)
    sid = os.urandom(16)
    try:
        nowhere = ("127.0.0.1", await dead_port())
        hard_task = asyncio.create_task(birthday_path(
            hard_media, sid, SHARED, TRANSCRIPT, False, [nowhere], [easy.local_address],
            "hard", sockets=sockets, timeout=3.0))
        easy_stream = await udp_path(easy, sid, SHARED, TRANSCRIPT, True, [],
                                     [nowhere], punch_timeout=3.0)
        hard_stream = await hard_task
        during = open_fds()
        await easy_stream.send(b"over the punched hole")
        assert await hard_stream.recv(100) == b"over the punched hole"
        await asyncio.gather(easy_stream.close(), hard_stream.close())
        return hard_stream, during
    finally:
        await easy.close()


async def test_an_extra_socket_wins_carries_quic_and_every_socket_is_closed() -> None:
    before = open_fds()
    hard_media = await MediaSocket.open("127.0.0.1", 0)
    await hard_media.close()  # its probes go nowhere: only the extra sockets reach the peer
    stream, during = await exchange(hard_media, sockets=32)
    assert isinstance(stream, OwningQuicStream)  # QUIC ran on the winning extra socket
    assert stream.raw.media is not hard_media and stream.raw.media.closed
    assert during <= before + 3  # the 31 losers were closed as soon as one won
    assert open_fds() == before


async def test_when_the_media_socket_wins_the_extra_sockets_are_closed() -> None:
    hard_media = await MediaSocket.open("127.0.0.1", 0)
    before = open_fds()
    try:
        stream, _ = await exchange(hard_media, sockets=32)
        assert not isinstance(stream, OwningQuicStream)
        assert open_fds() == before
    finally:
        await hard_media.close()


async def test_a_failed_punch_closes_every_extra_socket() -> None:
    media = await MediaSocket.open("127.0.0.1", 0)
    before = open_fds()
    try:
        nowhere = ("127.0.0.1", await dead_port())
        with pytest.raises(PunchFailed, match="256 extra sockets"):
            await birthday_path(media, os.urandom(16), SHARED, TRANSCRIPT, True, [],
                                [nowhere, ("127.0.0.1", nowhere[1] + 1)], "hard",
                                timeout=0.3)
        assert open_fds() == before
        with pytest.raises(PunchFailed):
            await birthday_path(media, os.urandom(16), SHARED, TRANSCRIPT, True, [],
                                [("127.0.0.1", 1), nowhere], "easy", timeout=0.3)
        assert open_fds() == before
    finally:
        await media.close()


async def test_a_cancelled_punch_closes_every_extra_socket() -> None:
    media = await MediaSocket.open("127.0.0.1", 0)
    before = open_fds()
    try:
        nowhere = ("127.0.0.1", await dead_port())
        task = asyncio.create_task(birthday_path(media, os.urandom(16), SHARED, TRANSCRIPT,
                                                 True, [], [nowhere], "hard", timeout=5.0))
        deadline = asyncio.get_running_loop().time() + 2
        while open_fds() < before + 256:  # all extra sockets open
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert open_fds() == before
        assert media.puncher(b"\x00" * 16) is None and not media._sessions
    finally:
        await media.close()


async def test_concurrent_sessions_share_a_bounded_number_of_extra_sockets() -> None:
    before = open_fds()
    first, second = ExtraSockets(HARD_SOCKETS), ExtraSockets(HARD_SOCKETS)
    third = ExtraSockets(HARD_SOCKETS)
    try:
        assert len(first) + len(second) + len(third) == MAX_EXTRA_TOTAL
        assert len(third) == 0 and open_fds() == before + MAX_EXTRA_TOTAL
    finally:
        for extra in (first, second, third):
            extra.close()
    assert open_fds() == before and extra_socket_allowance() == MAX_EXTRA_TOTAL


#: a fresh interpreter at a soft descriptor limit of 400: how many extra sockets it opens
LOW_LIMIT_PROBE = """
import asyncio, resource
from overlay.media.birthday import HARD_SOCKETS
from overlay.media.birthday_io import ExtraSockets

async def main():
    extra = ExtraSockets(HARD_SOCKETS)
    print(len(extra))
    extra.close()

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
asyncio.run(main())
"""


def test_a_low_descriptor_limit_leaves_the_daemon_three_quarters() -> None:
    """At a soft limit of 400 descriptors a daemon opens at most 100 extra sockets. Run in a
    process of its own: the count depends on the descriptors its process already holds, and
    a test runner's process (an xdist worker after hundreds of tests) holds many."""
    done = subprocess.run([sys.executable, "-c", LOW_LIMIT_PROBE], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100"]

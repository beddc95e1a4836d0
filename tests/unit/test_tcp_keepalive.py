"""The client's attach sessions ask the kernel for keepalive (a silent supernode host is
noticed in seconds); the options land on the real socket."""

from __future__ import annotations

import asyncio
import socket

import pytest

from overlay.attach.tcp_keepalive import TcpKeepalive, enable_keepalive


async def test_keepalive_options_reach_the_socket() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert enable_keepalive(writer.transport, TcpKeepalive(idle_s=3, interval_s=1, count=3))
        sock = writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 6000
    finally:
        writer.close()
        server.close()


def test_a_keepalive_that_would_flood_or_never_fire_is_refused() -> None:
    with pytest.raises(ValueError):
        TcpKeepalive(idle_s=0.1)
    with pytest.raises(ValueError):
        TcpKeepalive(count=0)
    assert TcpKeepalive().dead_after_s == 6.0

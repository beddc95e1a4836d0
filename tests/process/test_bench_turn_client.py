"""The relay benchmark's own TURN client (tools/bench/turn_client.py) against the real coturn
``turnserver`` on loopback, started the way the benchmark starts it: two allocations with
long-term credentials, ChannelBound to each other's relayed address, carry a ChannelData
datagram from one client to the other; a wrong password is refused."""

from __future__ import annotations

import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.bench import turn_client as tc
from tools.bench import turn_wire as tw
from tools.bench.relay_coturn import (
    TURN_PASS,
    TURN_PORT,
    TURN_USER,
    start_turnserver,
    wait_listening,
)

pytestmark = pytest.mark.skipif(shutil.which("turnserver") is None,
                                reason="coturn's turnserver is not installed")


@pytest.fixture
def turn_host(tmp_path: Path) -> Iterator[str]:
    host = f"127.{2 + secrets.randbelow(250)}.{secrets.randbelow(250)}.3"
    turn, _ = start_turnserver(host, tmp_path)
    try:
        wait_listening(turn, host, tmp_path)
        yield host
    finally:
        turn.kill()
        turn.wait(5)


def _udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def test_channel_data_goes_from_one_allocation_to_the_other(turn_host: str) -> None:
    server = (turn_host, TURN_PORT)
    client_host = turn_host.rsplit(".", 1)[0] + ".7"
    a = tc.allocate(_udp(client_host), server, TURN_USER, TURN_PASS)
    b = tc.allocate(_udp(client_host), server, TURN_USER, TURN_PASS)
    try:
        assert a.relayed[0] == turn_host and b.relayed[0] == turn_host
        assert a.relayed != b.relayed
        assert a.mapped == a.sock.getsockname()  # XOR-MAPPED-ADDRESS decoded right
        tc.channel_bind(a, 0x4000, b.relayed)
        tc.channel_bind(b, 0x4001, a.relayed)
        payload = secrets.token_bytes(160)
        a.sock.sendto(tw.channel_data(0x4000, payload), server)
        b.sock.settimeout(2.0)
        data, addr = b.sock.recvfrom(2048)
        assert addr == server
        assert tw.decode_channel_data(data) == (0x4001, payload)  # on B's own channel
    finally:
        for alloc in (a, b):
            tc.release(alloc)
            alloc.sock.close()


def test_wrong_password_is_refused(turn_host: str) -> None:
    sock = _udp(turn_host.rsplit(".", 1)[0] + ".8")
    try:
        with pytest.raises(tc.TurnError, match="401"):
            tc.allocate(sock, (turn_host, TURN_PORT), TURN_USER, TURN_PASS + "x")
    finally:
        sock.close()

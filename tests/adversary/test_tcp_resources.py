"""A supernode's TCP listener against one attacker holding many addresses of one /24 and as
many throwaway keys as it likes: connections are capped per /24 (not only per exact IP) while
other networks still get in; frames before the handshake stay small; and idle lookup-only
sessions are evicted so that an honest client can still attach."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from overlay.attach import (
    ClientConnection,
    Event,
    HandshakeComplete,
    PeerClosed,
    ProtocolViolation,
)
from overlay.attach.adapter import ClientSession, SessionError, SessionProtocol
from overlay.core import records
from overlay.core.identity import Identity
from tests.helpers.daemons import http_text, parse_metrics
from tests.helpers.netutil import loopback_ips, subnet_ips, wait_for
from tests.helpers.overlay_net import ProcessOverlay

#: ServiceLimits.max_connections_per_subnet, the documented default
SUBNET_CAP = 256
#: the supernode's --max-conns in the eviction test
MAX_CONNS = 40


async def still_open(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """False when the server closed the connection (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):  # e.g. the Error frame saying why
                pass
            return False
    except ConnectionError:
        return False
    except TimeoutError:
        return True


@pytest.fixture
async def overlay(tmp_path):
    net = await ProcessOverlay(tmp_path, 1, ["--handshake-timeout", "30"]).start()
    yield net
    net.stop()


async def test_connections_from_one_slash24_are_capped(overlay):
    host, port_s = overlay.supernode_addr(0).split(":")
    port = int(port_s)
    per_ip = 30  # under the per-IP cap (64): only a per-/24 cap can stop this
    ips = subnet_ips(SUBNET_CAP // per_ip + 3)  # one /24
    assert len({ip.rsplit(".", 1)[0] for ip in ips}) == 1
    conns = []
    for ip in ips:
        for _ in range(per_ip):
            conns.append(await asyncio.open_connection(host, port, local_addr=(ip, 0)))
    open_now = await asyncio.gather(*(still_open(r) for r, _ in conns))
    assert len(conns) > SUBNET_CAP
    assert sum(open_now) <= SUBNET_CAP
    # a client from another /24 still gets a session and an answer
    (other,) = loopback_ips(1)
    assert other.rsplit(".", 1)[0] != ips[0].rsplit(".", 1)[0]
    session = await ClientSession.connect(host, port, Identity.generate(),
                                          expected_node_key=None, lookup_only=True)
    assert await session.directory() is not None
    session.close()
    metrics = parse_metrics(await http_text(f"http://{overlay.http(0)}/metrics"))
    refused = metrics['overlay_sessions_cut_off_total{reason="per_subnet_limit"}']
    assert refused >= len(conns) - SUBNET_CAP
    for _, writer in conns:
        writer.close()


#: the most a connection may buffer before its handshake (a frame prefix and its body)
PRE_HANDSHAKE_CAP = 4 + 2048


async def test_pre_handshake_frames_stay_small(overlay):
    """Connections that announce 60 KiB frames before any handshake are cut at the length
    prefix; ones that trickle a small frame hold at most the pre-handshake cap each."""
    host, port_s = overlay.supernode_addr(0).split(":")
    port = int(port_s)
    ips = subnet_ips(8)  # one /24
    big, small = [], []
    for i in range(40):
        reader, writer = await asyncio.open_connection(host, port, local_addr=(ips[i % 8], 0))
        writer.write((60 * 1024).to_bytes(4, "big") + b"\x00" * 4096)  # and never the rest
        big.append((reader, writer))
    for i in range(40):
        reader, writer = await asyncio.open_connection(host, port, local_addr=(ips[i % 8], 0))
        writer.write((2000).to_bytes(4, "big") + b"\x00" * 1000)
        small.append((reader, writer))
    for _, writer in big + small:
        await writer.drain()
    url = f"http://{overlay.http(0)}/metrics"
    label = 'overlay_sessions_cut_off_total{reason="pre_handshake_frame_too_large"}'

    async def big_ones_cut() -> bool:
        return parse_metrics(await http_text(url)).get(label, 0) >= len(big)

    # the handshake deadline is 30 s: only the prefix check can cut them within 10
    await wait_for(big_ones_cut, timeout=10)
    assert not any(await asyncio.gather(*(still_open(r, 0.5) for r, _ in big)))

    async def small_ones_buffered() -> bool:
        held = parse_metrics(await http_text(url)).get("overlay_tcp_pre_handshake_bytes", 0)
        return held >= len(small) * 1004

    await wait_for(small_ones_buffered, timeout=10)
    metrics = parse_metrics(await http_text(url))
    assert metrics["overlay_tcp_pre_handshake_bytes"] <= len(small) * PRE_HANDSHAKE_CAP
    assert all(await asyncio.gather(*(still_open(r, 0.2) for r, _ in small)))
    # and an honest client is still served
    session = await ClientSession.connect(host, port, Identity.generate(),
                                          expected_node_key=None, lookup_only=True)
    assert await session.directory() is not None
    session.close()
    for _, writer in big + small:
        writer.close()


async def lookup_session_from(ip: str, host: str, port: int) -> SessionProtocol:
    """A lookup-only session with a throwaway key, from ``ip``: it answers every ping (the
    session does) and never asks anything."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_event(_proto: SessionProtocol, event: Event) -> None:
        if isinstance(event, HandshakeComplete) and not done.done():
            done.set_result(None)
        elif isinstance(event, ProtocolViolation | PeerClosed) and not done.done():
            done.set_exception(ConnectionError(str(event)))

    def make(now: float) -> ClientConnection:
        return ClientConnection(Identity.generate(), expected_node_key=None, now=now,
                                lookup_only=True)

    _, proto = await loop.create_connection(lambda: SessionProtocol(make, on_event),
                                            host, port, local_addr=(ip, 0))
    assert isinstance(proto.conn, ClientConnection)
    proto.transmit(proto.conn.start_handshake())
    async with asyncio.timeout(5):
        await done
    return proto


async def test_idle_lookup_only_sessions_are_evicted_for_an_honest_client(tmp_path):
    net = await ProcessOverlay(tmp_path, 1, ["--max-conns", str(MAX_CONNS)]).start()
    try:
        host, port_s = net.supernode_addr(0).split(":")
        port = int(port_s)
        ips = subnet_ips(8)  # one /24
        squatters = [await lookup_session_from(ips[i % 8], host, port)
                     for i in range(MAX_CONNS)]
        alice = Identity.generate()
        held: list[ClientSession] = []

        async def attached() -> bool:
            try:
                session = await ClientSession.connect(host, port, alice, expected_node_key=None,
                                                      user="alice", device="laptop", timeout=2)
                await session.attach(records.presence(
                    alice, "alice", "laptop", seq=1, supernode_key=session.node_key,
                    supernode_host=host, supernode_port=port))
            except SessionError:
                return False
            held.append(session)
            return True

        # the table is full of throwaway sessions: the honest client still gets in
        await wait_for(attached, timeout=15, interval=0.5)
        (session,) = held
        # more squatters only push out squatters, never the attached client
        for i in range(10):
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                squatters.append(await lookup_session_from(ips[i % 8], host, port))
        assert not session.closed
        metrics = parse_metrics(await http_text(f"http://{net.http(0)}/metrics"))
        assert metrics['overlay_sessions_cut_off_total{reason="lookup_idle_evicted"}'] >= 1
        assert metrics["overlay_attached_clients"] == 1
        session.close()
        for proto in squatters:
            proto.close()
    finally:
        net.stop()

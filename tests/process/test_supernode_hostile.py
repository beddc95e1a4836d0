"""Hostile input on a supernode's TCP listener: it stays up, keeps serving honest clients,
and cuts each bad peer off with a logged reason."""

from __future__ import annotations

import asyncio
import os

import pytest

from overlay.attach import ClientConnection
from overlay.attach.adapter import AttachRefused, ClientSession
from overlay.core import records
from overlay.core.identity import Identity
from tests.helpers.daemons import http_get, http_text, parse_metrics
from tests.helpers.netutil import loopback_ips
from tests.helpers.overlay_net import ProcessOverlay


async def attach(host: str, port: int, node_key: bytes, identity: Identity, user: str,
                 device: str = "laptop", seq: int = 1) -> ClientSession:
    session = await ClientSession.connect(host, port, identity, expected_node_key=node_key,
                                          user=user, device=device)
    await session.attach(records.presence(identity, user, device, seq=seq,
                                          supernode_key=node_key, supernode_host=host,
                                          supernode_port=port))
    return session


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    """True when the server closes the connection (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.fixture
async def overlay(tmp_path):
    net = await ProcessOverlay(tmp_path, 1, ["--handshake-timeout", "1", "--heartbeat", "1",
                                             "--max-conns-per-ip", "40"]).start()
    yield net
    net.stop()


async def test_supernode_survives_hostile_peers_and_serves_honest_ones(overlay):
    host, port_s = overlay.supernode_addr(0).split(":")
    port = int(port_s)
    lookup = await ClientSession.connect(*overlay.bootstrap_addr.split(":")[:1], overlay.port,
                                         Identity.generate(), expected_node_key=None,
                                         lookup_only=True)
    directory = await lookup.directory()
    node_key = directory[0].record.node_key
    alice = Identity.generate()
    honest = await attach(host, port, node_key, alice, "alice")

    bad_ip = loopback_ips(1)[0]

    async def raw(data: bytes) -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(bad_ip, 0))
        writer.write(data)
        return reader

    # an oversized length prefix is refused before any body is read
    assert await closed_by_server(await raw(b"\xff\xff\xff\xf0"))
    # garbage before the handshake
    assert await closed_by_server(await raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64)))
    # slowloris: half a length prefix, then nothing: cut off at the handshake deadline
    assert await closed_by_server(await raw(b"\x00\x00"), timeout=5)
    # a frame header promising a body that never comes
    assert await closed_by_server(await raw(b"\x00\x00\x01\x00" + b"\x93"), timeout=5)

    # garbage after a completed handshake
    mallory = Identity.generate()
    conn = ClientConnection(mallory, expected_node_key=node_key, now=0.0, user="mallory",
                            device="d")
    reader, writer = await asyncio.open_connection(host, port, local_addr=(bad_ip, 0))
    writer.write(conn.start_handshake())
    server_hello = await reader.read(65536)
    conn.receive_data(server_hello, 0.0)
    client_auth = conn.data_to_send()
    writer.write(client_auth)
    writer.write(b"\x00\x00\x00\x10" + os.urandom(16))
    assert await closed_by_server(reader)

    # a replayed handshake (the recorded ClientHello and ClientAuth on a new connection)
    replay = ClientConnection(mallory, expected_node_key=node_key, now=0.0, user="mallory",
                              device="d")
    hello_frame = replay.start_handshake()
    reader, writer = await asyncio.open_connection(host, port, local_addr=(bad_ip, 0))
    writer.write(hello_frame)
    await reader.read(65536)  # a fresh ServerHello: the old signature cannot match it
    writer.write(client_auth)
    assert await closed_by_server(reader)

    # a client claiming a name whose records are signed by another key
    with pytest.raises(AttachRefused, match="another key"):
        await attach(host, port, node_key, mallory, "alice", device="laptop")
    with pytest.raises(AttachRefused, match="held by another key"):
        await attach(host, port, node_key, mallory, "alice", device="phone")

    # 1,000 connections from one address
    conns = []
    for _ in range(1000):
        try:
            conns.append(await asyncio.open_connection(host, port, local_addr=(bad_ip, 0)))
        except OSError:
            break

    async def cut_off(reader: asyncio.StreamReader) -> bool:
        """The supernode closed this connection (within a deadline all share: on a loaded
        machine it accepts 1,000 connections slower than a fixed wait per reader allows)."""
        try:
            async with asyncio.timeout(5.0):
                return await reader.read(1) == b""
        except ConnectionError:
            return True
        except TimeoutError:
            return reader.at_eof()

    cut = sum(await asyncio.gather(*(cut_off(reader) for reader, _ in conns)))
    assert cut >= 1000 - 40 - 5
    for _, writer in conns:
        writer.close()

    # the honest client is still attached and served; the supernode is up
    assert not honest.closed
    found = await lookup.lookup("alice")
    assert [s.record.supernode_key for s in found] == [node_key]
    status, _ = await http_get(f"http://{overlay.http(0)}/healthz")
    assert status == 200
    log = overlay.supernodes[0].log()
    for reason in ("frame", "more than 40 connections", "handshake", "another key"):
        assert reason in log, reason

    text = await http_text(f"http://{overlay.http(0)}/metrics")
    metrics = parse_metrics(text)
    assert metrics['overlay_attach_refused_total{reason="name_claimed"}'] == 2
    assert metrics["overlay_attached_clients"] == 1
    cut = "overlay_sessions_cut_off_total"
    assert metrics[f'{cut}{{reason="frame_too_large"}}'] >= 1
    assert metrics[f'{cut}{{reason="decrypt_failed"}}'] == 1
    assert metrics[f'{cut}{{reason="bad_handshake_signature"}}'] == 1
    assert metrics[f'{cut}{{reason="handshake_timeout"}}'] >= 2
    assert metrics[f'{cut}{{reason="per_ip_limit"}}'] >= 1000 - 40 - 5
    honest.close()
    lookup.close()

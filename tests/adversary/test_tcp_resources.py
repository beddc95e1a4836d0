"""A supernode's TCP listener against one attacker holding many addresses of one /24:
connections are capped per /24 (not only per exact IP) while other networks still get in."""

from __future__ import annotations

import asyncio

import pytest

from overlay.attach.adapter import ClientSession
from overlay.core.identity import Identity
from tests.helpers.daemons import http_text, parse_metrics
from tests.helpers.netutil import loopback_ips, wait_for
from tests.helpers.overlay_net import ProcessOverlay

#: ServiceLimits.max_connections_per_subnet, the documented default
SUBNET_CAP = 256


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
    ips = loopback_ips(SUBNET_CAP // per_ip + 3)  # one /24
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
    ips = loopback_ips(8)  # one /24
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

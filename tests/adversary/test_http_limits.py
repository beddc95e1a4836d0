"""HTTP ``/v1/users/NAME`` under a flood from one client IP: a token bucket per IP answers
429 (with Retry-After) after the documented burst, another IP is still served, and the node
starts no more DHT lookups than the bucket allowed."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.helpers.daemons import Daemon, http_text, parse_metrics, wait_ready
from tests.helpers.netutil import loopback_ips
from tests.helpers.node_keys import key_args

FLOOD = 60
#: HttpLimits.user_burst, the documented default
BURST = 10


async def get_from(local_ip: str, url: str) -> tuple[int, str]:
    connector = aiohttp.TCPConnector(local_addr=(local_ip, 0))
    async with (
        aiohttp.ClientSession(connector=connector,
                              timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get("Retry-After", "")


async def test_user_lookup_flood_from_one_ip_is_limited(tmp_path):
    node_ip, attacker_ip, other_ip = loopback_ips(3)
    http = f"{node_ip}:8080"
    boot = Daemon(["bootstrap", "--listen", f"{node_ip}:4000", "--http", http,
                   *key_args(tmp_path, "boot")], tmp_path / "boot.log").start()
    try:
        await wait_ready(http, boot)
        url = f"http://{http}/v1/users/alice"
        answers = await asyncio.gather(*(get_from(attacker_ip, url) for _ in range(FLOOD)))
        statuses = [status for status, _ in answers]
        served = statuses.count(200)
        # the burst, plus what the bucket refilled while the flood ran
        assert served <= BURST + 5, statuses
        refused = [(s, ra) for s, ra in answers if s == 429]
        assert len(refused) >= FLOOD - BURST - 5, statuses
        assert all(ra.isdigit() and int(ra) >= 1 for _, ra in refused), refused
        # another client IP is still served
        assert (await get_from(other_ip, url))[0] == 200
        metrics = parse_metrics(await http_text(f"http://{http}/metrics"))
        # one DHT lookup per request served, none for a refused one
        assert metrics["overlay_http_user_lookups_total"] == served + 1
        assert metrics['overlay_http_refused_total{reason="rate_limited"}'] == len(refused)
    finally:
        boot.kill()

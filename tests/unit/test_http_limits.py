"""/v1/users/NAME: lookups in flight are capped (429 "busy", nothing queued), one lookup per
request, and the per-IP bucket answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer

from overlay.dht import DHTNode
from overlay.dht.server import ValueAnswers
from overlay.node.http_api import HttpLimits, make_app
from tests.helpers.netutil import wait_for


class SlowDHT:
    """Answers nothing until released; counts the lookups it was asked for."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.lookups = 0

    async def get_answers(self, key: Any) -> ValueAnswers:
        self.lookups += 1
        await self.release.wait()
        return ValueAnswers([], {})


async def test_lookups_in_flight_are_capped_and_the_bucket_refuses():
    dht = SlowDHT()
    app = make_app(cast(DHTNode, dht), lambda: True,
                   limits=HttpLimits(user_rate_per_s=0.5, user_burst=4, max_concurrent_lookups=2))
    async with TestClient(TestServer(app)) as client:
        first = [asyncio.create_task(client.get("/v1/users/alice")) for _ in range(2)]
        await wait_for(lambda: dht.lookups == 2, timeout=5)
        busy = await client.get("/v1/users/alice")
        assert busy.status == 429 and (await busy.json())["reason"] == "busy"
        dht.release.set()
        assert [r.status for r in await asyncio.gather(*first)] == [200, 200]
        assert dht.lookups == 2
        ok = await client.get("/v1/users/alice")  # the 4th token
        assert ok.status == 200
        limited = await client.get("/v1/users/alice")
        assert limited.status == 429 and limited.headers["Retry-After"] == "2"
        assert (await limited.json())["reason"] == "rate_limited"
        assert dht.lookups == 3

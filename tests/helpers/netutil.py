"""Helpers for tests: in-process DHT networks on distinct loopback addresses, and waiting."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

from overlay.core.identity import Identity
from overlay.dht import DHTConfig, DHTNode


def loopback_ips(n: int) -> list[str]:
    """``n`` distinct 127.x.y.z addresses in a random /16, so parallel tests do not meet."""
    a, b = 2 + secrets.randbelow(250), secrets.randbelow(256)
    return [f"127.{a}.{b + i // 250 & 255}.{1 + i % 250}" for i in range(n)]


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until true; fail the test with a clear message after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Network:
    """A bootstrap node and ``size`` DHT nodes, each on its own loopback IP."""

    def __init__(self, size: int, config: DHTConfig | None = None) -> None:
        self.config = config or DHTConfig(refresh_interval_s=3600)
        self.ips = loopback_ips(size + 1)
        self.bootstrap = DHTNode(Identity.generate(), self.config)
        self.nodes = [DHTNode(Identity.generate(), self.config) for _ in range(size)]

    async def start(self) -> Network:
        await self.bootstrap.start(self.ips[0], 0)
        for node, ip in zip(self.nodes, self.ips[1:], strict=True):
            await node.start(ip, 0)
        for node in self.nodes:
            await node.bootstrap([self.bootstrap.address])
        return self

    def stop(self) -> None:
        for node in [self.bootstrap, *self.nodes]:
            node.stop()


def wait_until(check: Callable[[], object], timeout: float, what: str,
               interval: float = 0.2) -> object:
    """Blocking ``wait_for`` for tests that drive processes synchronously (the NAT lab)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what} not within {timeout}s")

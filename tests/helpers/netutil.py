"""Helpers for tests: in-process DHT networks on distinct loopback addresses, and waiting."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from overlay.core.identity import Identity
from overlay.dht import DHTConfig, DHTNode
from tests.helpers.node_keys import production_identity

#: the id puzzle of in-process test networks (:class:`Network`, :func:`node_identity`): 16
#: key generations per node instead of ~65,536, so 200 nodes start at once. The production
#: constant (``DHTConfig.id_puzzle_bits``) is what every process test and the CLI use.
TEST_ID_PUZZLE_BITS = 4


def loopback_ips(n: int) -> list[str]:
    """``n`` distinct 127.x.y.z addresses in a random /16 (so parallel tests do not meet),
    each in its own /24 up to 256 (then two per /24, ...), as distinct hosts on the internet
    would be: DHT routing tables take at most 2 contacts of one /24 per bucket and 10 in all
    (``DHTConfig.max_contacts_per_subnet*``). 127.0.0.0/8 is all loopback."""
    a, b = 2 + secrets.randbelow(250), secrets.randbelow(256)
    return [f"127.{a}.{(b + i) & 255}.{1 + i // 256}" for i in range(n)]


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    """A non-blocking IPv4 UDP socket bound to ``host`` on a free port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def subnet_ips(n: int) -> list[str]:
    """``n`` (≤ 250) distinct addresses of one random /24: one attacker's, or one network's."""
    a, b = 2 + secrets.randbelow(250), secrets.randbelow(256)
    return [f"127.{a}.{b}.{1 + i}" for i in range(n)]


def network_config(**fields: object) -> DHTConfig:
    """A DHT config for an in-process test network (:data:`TEST_ID_PUZZLE_BITS`)."""
    return DHTConfig(**{"refresh_interval_s": 3600, "id_puzzle_bits": TEST_ID_PUZZLE_BITS,
                        **fields})  # type: ignore[arg-type]


def node_identity(config: DHTConfig) -> Identity:
    """A public node's key for a network of ``config``: its id solves the id puzzle (the
    production puzzle's from :mod:`tests.helpers.node_keys`' pool)."""
    if config.id_puzzle_bits == DHTConfig().id_puzzle_bits:
        return production_identity()
    return Identity.generate_node(config.id_puzzle_bits)


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
    """A bootstrap node and ``size`` DHT nodes, each on its own loopback IP (its own /24),
    with ids solving the id puzzle of ``id_puzzle_bits`` (``config``'s is replaced: the test
    networks' by default; the production one to meet ``overlay`` processes)."""

    def __init__(self, size: int, config: DHTConfig | None = None,
                 id_puzzle_bits: int = TEST_ID_PUZZLE_BITS) -> None:
        self.config = dataclasses.replace(config or network_config(),
                                          id_puzzle_bits=id_puzzle_bits)
        self.ips = loopback_ips(size + 1)
        self.bootstrap = DHTNode(node_identity(self.config), self.config)
        self.nodes = [DHTNode(node_identity(self.config), self.config) for _ in range(size)]

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

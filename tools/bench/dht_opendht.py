"""OpenDHT (PyPI ``opendht``, the C++ DHT of Jami) as a third implementation in
:mod:`tools.bench.dht`.

Each node is a ``DhtRunner`` (its own C++ threads) on 127.0.0.1 with a random port, IPv6 on
``::1`` only, and its rate limits off (``DhtConfig.setRateLimit(-1, -1)``): with every node on
one address, OpenDHT's per-IP request limit would otherwise throttle the whole network
(tried: puts and gets of 1-3 s, its 1 s retransmission steps; nodes on distinct 127.x
addresses were seen by their peers under the bootstrap node's address). Values are plain
(unsigned) ``Value(bytes)`` of the same length as the overlay's signed records: OpenDHT's own
signed puts need its RSA identities, which no workload here uses. Callbacks arrive on OpenDHT's
threads and are handed to the event loop with ``call_soon_threadsafe``; ``time.process_time``
counts those threads' CPU too, so the bench's CPU per op is comparable.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

try:
    import opendht
except ImportError:  # an optional benchmark dependency: pip install -e '.[bench]'
    opendht = None

if TYPE_CHECKING:
    from tools.bench.dht import Item

NAME = "opendht"
AF_INET = 2


def available() -> bool:
    return opendht is not None


def version() -> str | None:
    return None if opendht is None else str(getattr(opendht, "version", lambda: "?")())


class OpenDhtBenchNode:
    """One OpenDHT node behind :class:`tools.bench.dht.BenchNode`."""

    def __init__(self) -> None:
        if opendht is None:
            raise RuntimeError("opendht is not installed (pip install -e '.[bench]')")
        self.runner: Any = opendht.DhtRunner()
        self._address: tuple[str, int] = ("", 0)
        self._stopped = False

    async def start(self, host: str) -> None:
        """Every node binds 127.0.0.1 (``host`` is not used; see the module docstring)."""
        config = opendht.DhtConfig()
        config.setRateLimit(-1, -1)
        self.runner.run(port=0, ipv4="127.0.0.1", ipv6="::1", config=config)
        bound = self.runner.getBound()
        self._address = ("127.0.0.1", int(bound.getPort()))

    async def join(self, addr: tuple[str, int]) -> None:
        """Bootstrap, then look our own id up (as a Kademlia join does): done when that
        search has run through the network and filled the routing table."""
        self.runner.bootstrap(addr[0], str(addr[1]))
        await self._search(lambda on_done: self.runner.get(
            self.runner.getNodeId(), lambda _value: True, on_done))

    async def _search(self, start: Any) -> bool:
        """Run ``start(on_done)`` and wait for OpenDHT's done callback (on its thread)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def on_done(ok: bool, _nodes: object) -> None:
            loop.call_soon_threadsafe(_resolve, done, bool(ok))

        start(on_done)
        return await done

    async def put(self, item: Item) -> int:
        value = opendht.Value(item.stock_value)
        if not await self._search(lambda on_done: self.runner.put(_key(item), value, on_done)):
            raise OpenDhtPutFailed(item.name)
        return -1

    async def get(self, item: Item) -> bool:
        found: list[bytes] = []

        def on_value(value: Any) -> bool:
            found.append(bytes(value.data))
            return True

        await self._search(lambda on_done: self.runner.get(_key(item), on_value, on_done))
        return item.stock_value in found

    def holds(self, item: Item) -> bool:
        return f"Storage {_key(item).toString().decode()} " in self.runner.getStorageLog()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.runner.join()

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    @property
    def table_size(self) -> int:
        if self._stopped:
            return 0
        return sum(line.lstrip().startswith("Node ")
                   for line in self.runner.getRoutingTablesLog(AF_INET).splitlines())

    def counters(self) -> Counter[str]:
        return Counter()


class OpenDhtPutFailed(Exception):
    """OpenDHT's put called back with ok = False."""


def _key(item: Item) -> Any:
    return opendht.InfoHash.get(item.name)


def _resolve(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)

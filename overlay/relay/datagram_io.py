"""The datagram relay's asyncio side: one UDP socket on the supernode that feeds
:class:`~overlay.relay.datagram.DatagramRelay` and sends what it returns, and a tick a
second for its timeouts."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import cast

from overlay.core.logs import get_logger
from overlay.relay.datagram import MAX_DATAGRAM_BYTES, DatagramRelay, Send

log = get_logger(__name__)

TICK_S = 1.0
#: the relay socket's receive buffer asked for: 4 MiB, ~200 ms of 1,000 calls (20 B/ms each
#: way per call at 160-byte frames), as coturn's. The kernel's default (208 KiB, ~13 ms of that)
#: overflowed whenever the supernode was off the CPU for a moment: 6 % of the datagrams of
#: tools.bench.relay_datagram's 1,000-call row were dropped there. Linux caps it at
#: ``net.core.rmem_max``; the size granted is logged.
RECEIVE_BUFFER_BYTES = 4 << 20


class DatagramRelayProtocol(asyncio.DatagramProtocol):
    def __init__(self, relay: DatagramRelay) -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None
        self._tick: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._tick = asyncio.get_running_loop().call_later(TICK_S, self._on_tick)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(data) > MAX_DATAGRAM_BYTES or not isinstance(addr[0], str):
            return
        self._send(self.relay.datagram_received(data, (addr[0], int(addr[1])),
                                                time.monotonic()))

    def error_received(self, exc: Exception) -> None:
        log.debug("relay_udp_error", error=str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.relay.close(time.monotonic())

    def _on_tick(self) -> None:
        self._send(self.relay.tick(time.monotonic()))
        self._tick = asyncio.get_running_loop().call_later(TICK_S, self._on_tick)

    def _send(self, out: list[Send]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for item in out:
            self.transport.sendto(item.data, item.addr)


async def start_datagram_relay(relay: DatagramRelay, host: str, port: int
                               ) -> tuple[asyncio.DatagramTransport, DatagramRelayProtocol]:
    """Serve ``relay`` on UDP ``host:port`` (0: any free port)."""
    loop = asyncio.get_running_loop()
    relay.wall_offset = time.time() - time.monotonic()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: DatagramRelayProtocol(relay), local_addr=(host, port))
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    except OSError as exc:
        log.warning("relay_udp_receive_buffer", error=str(exc))
    log.info("relay_udp_receive_buffer",
             granted_bytes=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return transport, protocol

"""The datagram relay's asyncio side: one UDP socket on the supernode that feeds
:class:`~overlay.relay.datagram.DatagramRelay` and sends what it returns, and a tick a
second for its timeouts.

The socket is read when the event loop says it is readable. With the C fast path
(:mod:`overlay.relay._forwarder`, built with the package when a C compiler is there) the
data of paired sessions is forwarded without entering Python, under leases the core gives
(see :mod:`overlay.relay.datagram`); every other datagram comes to the core, as all do
without it."""

from __future__ import annotations

import asyncio
import socket
import time

from overlay.core.logs import get_logger
from overlay.relay.datagram import (
    AMPLIFICATION,
    CONSENT_S,
    MAGIC,
    MAX_DATAGRAM_BYTES,
    Address,
    DatagramRelay,
    Send,
)

log = get_logger(__name__)

TICK_S = 1.0
#: the relay socket's receive buffer asked for: 4 MiB, ~200 ms of 1,000 calls (20 B/ms each
#: way per call at 160-byte frames), as coturn's. The kernel's default (208 KiB, ~13 ms of that)
#: overflowed whenever the supernode was off the CPU for a moment: 6 % of the datagrams of
#: tools.bench.relay_datagram's 1,000-call row were dropped there. Linux caps it at
#: ``net.core.rmem_max``; the size granted is logged.
RECEIVE_BUFFER_BYTES = 4 << 20
#: datagrams read per wakeup at most (the socket is level-triggered: the rest comes next)
READ_BATCH = 32


def fast_path_available() -> bool:
    """Whether the C fast path was built with this install."""
    try:
        from overlay.relay import _forwarder  # noqa: F401
    except ImportError:
        return False
    return True


class DatagramRelayEndpoint:
    """``relay`` served on ``sock`` (bound, non-blocking) by the running loop."""

    def __init__(self, relay: DatagramRelay, sock: socket.socket, *,
                 fast_path: bool = True) -> None:
        self.relay = relay
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        #: datagrams the core sent that the socket's full buffer dropped
        self.send_dropped = 0
        self._closed = False
        reader = self._read
        if fast_path and fast_path_available():
            from overlay.relay._forwarder import Forwarder
            forwarder = Forwarder(sock.fileno(), self._slow, MAGIC, MAX_DATAGRAM_BYTES,
                                  CONSENT_S, AMPLIFICATION)
            relay.fast_path = forwarder
            reader = forwarder.on_readable
        self.fast_path = relay.fast_path is not None
        self.loop.add_reader(sock.fileno(), reader)
        self._tick = self.loop.call_later(TICK_S, self._on_tick)

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tick.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.relay.close(time.monotonic())
        self.relay.fast_path = None
        self.sock.close()

    def _slow(self, data: bytes, addr: Address) -> None:
        self._send(self.relay.datagram_received(data, addr, time.monotonic()))

    def _read(self) -> None:
        """Without the fast path: every datagram to the core."""
        for _ in range(READ_BATCH):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier send
                log.debug("relay_udp_error", error=str(exc))
                return
            self._slow(data, (str(addr[0]), int(addr[1])))

    def _on_tick(self) -> None:
        self._send(self.relay.tick(time.monotonic()))
        self._tick = self.loop.call_later(TICK_S, self._on_tick)

    def _send(self, out: list[Send]) -> None:
        if self._closed:
            return
        for item in out:
            try:
                self.sock.sendto(item.data, item.addr)
            except (BlockingIOError, InterruptedError):
                self.send_dropped += 1  # a full send buffer drops it, as UDP does
            except OSError as exc:
                log.debug("relay_udp_error", error=str(exc))


async def start_datagram_relay(relay: DatagramRelay, host: str, port: int, *,
                               fast_path: bool = True) -> DatagramRelayEndpoint:
    """Serve ``relay`` on UDP ``host:port`` (0: any free port); ``fast_path=False`` keeps
    every datagram in the core even where the C fast path is built."""
    relay.wall_offset = time.time() - time.monotonic()
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError as exc:
            log.warning("relay_udp_receive_buffer", error=str(exc))
        sock.bind(sockaddr)
        endpoint = DatagramRelayEndpoint(relay, sock, fast_path=fast_path)
    except BaseException:
        sock.close()
        raise
    log.info("relay_udp_started", address=f"{endpoint.address[0]}:{endpoint.address[1]}",
             fast_path=endpoint.fast_path,
             receive_buffer_bytes=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return endpoint

"""A call over UDP, the asyncio side: one socket per call, the call core
(:class:`~overlay.call.session.CallSession`) driven by its timer, and the binding to a
datagram relay (:mod:`overlay.relay.datagram`) when the path is relayed.

What a path gives the call: a socket, the address datagrams go to (the peer's for a direct
path, the relay's for a relayed one), and, for a relay, the relay hello (token, rate,
credential) to bind with first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import cast

from overlay.call.errors import CallError
from overlay.call.session import CallSession, CallStats
from overlay.relay import datagram as dgram
from overlay.relay.protocol import SessionLimits, decode_limits, decode_status

Address = tuple[str, int]
#: ALLOCATE retransmission interval and the longest wait for the relay's OK
RETRANSMIT_S = 0.25
BIND_TIMEOUT_S = 20.0


class RelayRefused(CallError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"relay refused: {reason}")
        self.reason = reason


class CallSocket(asyncio.DatagramProtocol):
    """One UDP socket: relay control datagrams to a queue, everything else to the call."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.session: CallSession | None = None
        self.control: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(maxsize=64)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if data[:len(dgram.MAGIC)] == dgram.MAGIC:
            with contextlib.suppress(asyncio.QueueFull):
                self.control.put_nowait((data, (str(addr[0]), int(addr[1]))))
        elif self.session is not None:
            self.session.datagram_received(data, time.monotonic())

    def send(self, data: bytes, addr: Address) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.sendto(data, addr)
        return True

    @property
    def local(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_call_socket(host: str, port: int = 0) -> CallSocket:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        CallSocket, local_addr=(host, port))
    return protocol


async def bind_relay(sock: CallSocket, relay: Address, hello: bytes,
                     timeout_s: float = BIND_TIMEOUT_S) -> SessionLimits:
    """ALLOCATE at ``relay`` (answering its CHALLENGE, retransmitting) until STATUS; the
    session's limits, or :class:`RelayRefused`."""
    cookie = bytes(dgram.COOKIE_BYTES)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RelayRefused("no answer")
        sock.send(dgram.encode_allocate(cookie, hello), relay)
        try:
            data, addr = await asyncio.wait_for(sock.control.get(), min(left, RETRANSMIT_S))
        except TimeoutError:
            continue
        if addr != relay or len(data) < 6:
            continue
        kind, body = data[5], data[6:]
        if kind == dgram.CHALLENGE and len(body) == dgram.COOKIE_BYTES:
            cookie = body
        elif kind == dgram.STATUS:
            parsed = decode_status(body)
            if parsed is None:
                continue
            if not parsed[0]:
                raise RelayRefused(parsed[1])
            limits = decode_limits(body)
            return limits or SessionLimits(0, 0, 0)


async def run_call(session: CallSession, sock: CallSocket, send_to: Callable[[], Address],
                   seconds: float, on_line: Callable[[CallStats], None] | None = None
                   ) -> CallStats:
    """Run the call for ``seconds``; ``send_to()`` is asked for the current destination (a
    path change is the caller's :meth:`CallSession.switch_path` and a new address)."""
    sock.session = session
    start = time.monotonic()
    try:
        while (now := time.monotonic()) < start + seconds:
            for datagram in session.timer(now):
                if not sock.send(datagram, send_to()):
                    session.sender_dropped()
            line = session.stats_due(now)
            if line is not None and on_line is not None:
                on_line(line)
            await asyncio.sleep(max(0.0, session.next_timer() - time.monotonic()))
        return session.finish(time.monotonic())
    finally:
        sock.session = None

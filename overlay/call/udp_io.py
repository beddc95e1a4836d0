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
from overlay.relay.datagram_client import BIND_TIMEOUT_S, BINDING, REFUSED, RelayBinding
from overlay.relay.protocol import SessionLimits

Address = tuple[str, int]


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
    """Bind ``sock`` at ``relay`` (:class:`~overlay.relay.datagram_client.RelayBinding`:
    ALLOCATE, the CHALLENGE's cookie, retransmissions) until STATUS; the session's limits,
    or :class:`RelayRefused`."""
    binding = RelayBinding(relay, hello, time.monotonic(), timeout_s=timeout_s)
    while binding.state == BINDING:
        for datagram in binding.timer(time.monotonic()):
            sock.send(datagram, relay)
        if binding.state != BINDING:
            break
        wait = max(0.0, binding.next_timer() - time.monotonic())
        try:
            data, addr = await asyncio.wait_for(sock.control.get(), wait)
        except TimeoutError:
            continue
        for datagram in binding.datagram_received(data, addr, time.monotonic()):
            sock.send(datagram, relay)
    if binding.state == REFUSED:
        raise RelayRefused(binding.reason)
    assert binding.limits is not None
    return binding.limits


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

"""A call's path through a supernode's datagram relay (asyncio): QUIC between the two ends,
each bound at the relay from a UDP socket of its own.

Each end opens a fresh :class:`~overlay.media.media_socket.MediaSocket` (a relay address
serves one session), binds it at the relay with the relay hello (the caller's carries the
voucher both users signed) through :class:`~overlay.relay.datagram_client.RelayBinding`,
and, once the relay has paired both ends, runs QUIC to the relay's address: the caller as
client, the callee as server. The relay forwards each datagram as it is, so QUIC (and the
end-to-end securing on top of it) runs between the two ends; a call's frames then go as QUIC
DATAGRAM frames (:mod:`overlay.call.stream_io`), never queued behind each other. The
binding keeps sending KEEPALIVEs while the path lives, and RELEASEs the session when the
path closes (or the attempt is abandoned), so the relay's budget gets it back at once. The
path is ``"relay"`` and names its relay, like the TCP relay's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from overlay.core.addresses import Address
from overlay.core.tasks import unless_set
from overlay.media.errors import PEER_HOLDS_SPARE, PathLost
from overlay.media.media_socket import MediaSocket
from overlay.media.quic.connect import quic_connect
from overlay.media.quic.stream import OwningQuicStream
from overlay.media.stream import MediaStream, RelayRef
from overlay.relay.datagram_client import BINDING, REFUSED, RelayBinding
from overlay.relay.protocol import ROLE_CALLEE, ROLE_CALLER, SessionLimits, encode_hello

#: how long an end waits for the relay to pair it with the other end
BIND_TIMEOUT_S = 8.0
#: what a datagram relay attempt is called in the path race ("relay-udp-0", ...): it is a
#: relay (:func:`overlay.media.connect.is_relay`) and has a stagger of its own
ATTEMPT_PREFIX = "relay-udp"


class BoundRelay:
    """A :class:`RelayBinding` driven on a :class:`MediaSocket`: binds, then keeps the
    relay's consent with keepalives until :meth:`stop`."""

    def __init__(self, media: MediaSocket, binding: RelayBinding) -> None:
        self.media = media
        self.binding = binding
        self._changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        media.relay_control = self._received

    def _send(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            self.media.sendto(datagram, self.binding.relay)

    def _received(self, data: bytes, addr: Address) -> None:
        self._send(self.binding.datagram_received(data, addr, time.monotonic()))
        self._changed.set()
        self._schedule()

    def _on_timer(self) -> None:
        self._timer = None
        self._send(self.binding.timer(time.monotonic()))
        self._changed.set()
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.binding.next_timer()
        if at != float("inf") and self.media.relay_control is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, at - time.monotonic()), self._on_timer)

    async def bound(self) -> SessionLimits:
        """ALLOCATE until the relay pairs this end (its limits) or refuses (PathLost)."""
        self._on_timer()
        while self.binding.state == BINDING:
            self._changed.clear()
            await self._changed.wait()
        if self.binding.state == REFUSED:
            raise PathLost(f"datagram relay refused: {self.binding.reason}")
        assert self.binding.limits is not None
        return self.binding.limits

    def stop(self) -> None:
        """Release the session at the relay; stop keeping it."""
        self._send(self.binding.release())
        self.media.relay_control = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def udp_relay_attempt(host: str, udp_port: int, node_key: bytes, token: bytes,
                      initiator: bool, rate_bps: int, *, voucher: bytes | None = None,
                      bind_timeout_s: float = BIND_TIMEOUT_S,
                      stop_pairing: asyncio.Event | None = None
                      ) -> Callable[[], Awaitable[MediaStream]]:
    """Bind at the datagram relay ``host:udp_port`` as the caller's (``initiator``, its
    hello with ``voucher``) or the callee's end of the session of ``token``, then QUIC.
    ``stop_pairing``: as :func:`overlay.media.transport_hooks.relay_attempt`'s (a binding
    not paired yet gives up; one paired goes on to its QUIC handshake)."""
    relay = RelayRef(node_key)
    addr = (host, udp_port)
    hello = encode_hello(ROLE_CALLER if initiator else ROLE_CALLEE, token, rate_bps,
                         voucher if initiator else None)

    async def attempt() -> MediaStream:
        media = await MediaSocket.open("::" if ":" in host else "0.0.0.0", 0)
        bound = BoundRelay(media, RelayBinding(addr, hello, time.monotonic(),
                                               timeout_s=bind_timeout_s))
        try:
            await unless_set(bound.bound(), stop_pairing, PathLost(PEER_HOLDS_SPARE))
            raw = await quic_connect(media, addr, initiator=initiator)
        except BaseException:
            bound.stop()
            await media.close()
            raise

        async def release() -> None:
            bound.stop()
            await media.close()

        return OwningQuicStream(raw, release, path="relay", relay=relay)

    return attempt

"""Where the media service meets the transports: end-to-end securing of a raw path, and the
client's UDP media socket (binding and NAT type through supernodes, hole punching with QUIC
on top). Kept in one place so the service reads as a sequence of decisions."""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from overlay.core.identity import Identity
from overlay.media.binding import nat_type
from overlay.media.punch import MediaSocket, punch_feasible
from overlay.media.quic_path import udp_path
from overlay.media.secure_stream import secure as secure_stream
from overlay.media.signalling import Address, Candidates
from overlay.media.stream import ByteStream

SECURE_TIMEOUT_S = 5.0
RELAY_CONNECT_TIMEOUT_S = 8.0
NAT_CACHE_S = 60.0
BINDING_TIMEOUT_S = 1.5


async def secure(raw: ByteStream, shared: bytes, transcript: bytes, initiator: bool
                 ) -> ByteStream:
    return await secure_stream(raw, shared, transcript, initiator, SECURE_TIMEOUT_S)


@dataclass
class UdpState:
    media: MediaSocket
    nat: str = "unknown"
    mapped: tuple[Address, ...] = ()
    checked_at: float = float("-inf")
    checked_with: tuple[Address, ...] = ()


async def open_udp() -> UdpState:
    return UdpState(await MediaSocket.open("0.0.0.0", 0))


async def close_udp(udp: UdpState) -> None:
    await udp.media.close()


async def udp_candidates(
    udp: UdpState, identity: Identity, local_ip: str,
    supernodes: list[tuple[Address, bytes]],
) -> tuple[list[Address], str]:
    """Host and server-reflexive UDP candidates of the media socket, and the NAT type (asked
    of up to two supernodes from the same socket; remembered for a minute)."""
    port = udp.media.local_address[1]
    addrs = tuple(a for a, _ in supernodes[:2])
    if time.monotonic() - udp.checked_at > NAT_CACHE_S or addrs != udp.checked_with:
        report = await nat_type(udp.media, identity, supernodes[:2], BINDING_TIMEOUT_S,
                                local=(local_ip, port))
        udp.nat = report.nat
        udp.mapped = tuple(report.candidates[1:])
        udp.checked_at, udp.checked_with = time.monotonic(), addrs
    candidates = [(local_ip, port), *udp.mapped]
    return list(dict.fromkeys(candidates)), udp.nat


def relay_available() -> bool:
    return importlib.util.find_spec("overlay.relay.client") is not None


def relay_attempt(host: str, port: int, node_key: bytes, token: bytes, initiator: bool,
                  rate_bps: int) -> Callable[[], Awaitable[ByteStream]]:
    """Connect to a relay as the caller's (A) or callee's (B) half of one session."""

    async def attempt() -> ByteStream:
        client = importlib.import_module("overlay.relay.client")
        stream: ByteStream = await client.relay_connect(
            host, port, token, 0 if initiator else 1, rate_bps, RELAY_CONNECT_TIMEOUT_S)
        stream.relay_key = node_key  # type: ignore[attr-defined]
        stream.relay_id = node_key.hex()[:16]  # type: ignore[attr-defined]
        return stream

    return attempt


def udp_attempt(
    udp: UdpState, session_id: bytes, initiator: bool, local: Candidates, remote: Candidates,
    shared: bytes, transcript: bytes,
) -> Callable[[], Awaitable[ByteStream]] | None:
    """The hole-punching attempt, or None when it cannot work for these NAT types."""
    if not remote.udp or not punch_feasible(local.nat, remote.nat):
        return None

    async def attempt() -> ByteStream:
        return await udp_path(udp.media, session_id, shared, transcript, initiator,
                              list(local.udp), list(remote.udp))

    return attempt

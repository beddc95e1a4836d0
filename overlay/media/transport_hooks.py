"""Where the media service meets the transports: end-to-end securing of a raw path, the relay
path, and the client's UDP media socket (binding and NAT type through supernodes, hole
punching with QUIC on top). Kept in one place so the service reads as a sequence of
decisions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from overlay.core.addresses import Address
from overlay.core.identity import Identity
from overlay.core.tasks import unless_set
from overlay.media.binding import BINDING_TIMEOUT_S, nat_type, settle
from overlay.media.birthday import birthday_role
from overlay.media.birthday_io import birthday_path
from overlay.media.errors import PEER_HOLDS_SPARE, PathLost, losing_path
from overlay.media.media_socket import MediaSocket
from overlay.media.punch import punch_feasible
from overlay.media.quic.connect import udp_path
from overlay.media.quic.stream import QuicByteStream
from overlay.media.relay_preconnect import RelayPreconnect
from overlay.media.secure_stream import InviteSalt
from overlay.media.secure_stream import secure as secure_stream
from overlay.media.signalling import Candidates
from overlay.media.stream import MediaStream, RelayRef, TcpByteStream, discard_later
from overlay.media.tcp_punch_io import PunchedFirst
from overlay.relay.client import RelayByteStream, RelayLimitReached, relay_connect
from overlay.relay.voucher import token_hash

SECURE_TIMEOUT_S = 5.0
RELAY_CONNECT_TIMEOUT_S = 8.0
NAT_CACHE_S = 60.0
#: an older answer is still used, while a new one is asked for in the background: a send
#: does not wait for the binding (up to BINDING_TIMEOUT_S, more on a slow link)
NAT_STALE_S = 600.0


async def secure(raw: MediaStream, shared: bytes, transcript: bytes, initiator: bool,
                 invite_salt: InviteSalt | None = None) -> MediaStream:
    """End-to-end secure a raw path; the secured stream names the same relay.
    ``invite_salt``: the session's, when its invite carried the caller's path salt. A 0-RTT
    QUIC path, and a caller's TCP dial or punch that says so (:mod:`.tcp_listener`,
    :mod:`.tcp_punch_io`), are secured caller first (the caller returns at once,
    unconfirmed: its bytes go with its first flight)."""
    return await secure_stream(
        raw, shared, transcript, initiator, SECURE_TIMEOUT_S, relay=raw.relay,
        invite_salt=invite_salt, caller_first=caller_first(raw))


def caller_first(raw: MediaStream) -> bool:
    """Whether both sides secure this raw path caller first."""
    if isinstance(raw, QuicByteStream):
        return raw.core.zero_rtt
    return isinstance(raw, TcpByteStream | PunchedFirst) and raw.caller_first


@dataclass
class UdpState:
    media: MediaSocket
    nat: str = "unknown"
    mapped: tuple[Address, ...] = ()
    checked_at: float = float("-inf")
    checked_with: tuple[Address, ...] = ()
    #: the check under way (at attach, or the refresh of a stale answer), while it runs
    refreshing: asyncio.Task[None] | None = field(default=None, repr=False)


async def open_udp() -> UdpState:
    return UdpState(await MediaSocket.open("0.0.0.0", 0))


async def close_udp(udp: UdpState) -> None:
    if udp.refreshing is not None:
        udp.refreshing.cancel()
    await udp.media.close()


async def udp_candidates(
    udp: UdpState, identity: Identity, local_ip: str,
    supernodes: list[tuple[Address, bytes]], rtts: Mapping[bytes, float] | None = None,
) -> tuple[list[Address], str]:
    """Host and server-reflexive UDP candidates of the media socket, and the NAT type (asked
    of up to two supernodes from the same socket, ``rtts`` their measured RTTs by node key;
    remembered for a minute). An older answer, also one from other supernodes, is used for
    up to :data:`NAT_STALE_S` while a new one is asked for in the background: only a first
    answer, or an ``"unknown"`` one (one supernode answered) when two can be asked now, is
    waited for. So a TCP-only network's send does not wait for its binding to time out once
    the client has asked (it does when it attaches)."""
    port = udp.media.local_address[1]
    addrs = tuple(a for a, _ in supernodes[:2])

    async def check() -> None:
        report = await nat_type(udp.media, identity, supernodes[:2], BINDING_TIMEOUT_S,
                                local=(local_ip, port), rtts=rtts)
        udp.nat = settle(udp.nat, udp.mapped, report.nat, report.mapped)
        udp.mapped = tuple(report.candidates[1:])
        udp.checked_at, udp.checked_with = time.monotonic(), addrs

    def start() -> asyncio.Task[None]:
        task = asyncio.ensure_future(check())
        udp.refreshing = task
        task.add_done_callback(lambda _: _refreshed(udp, task))
        return task

    age = time.monotonic() - udp.checked_at
    other = addrs != udp.checked_with
    if age > NAT_STALE_S or (other and udp.nat == "unknown" and len(addrs) > 1):
        # a check under way (the one at attach, a refresh) is joined, not begun again
        await asyncio.shield(udp.refreshing or start())
    elif (age > NAT_CACHE_S or other) and udp.refreshing is None:
        start()
    candidates = [(local_ip, port), *udp.mapped]
    return list(dict.fromkeys(candidates)), udp.nat


def _refreshed(udp: UdpState, task: asyncio.Task[None]) -> None:
    if udp.refreshing is task:
        udp.refreshing = None
    if not task.cancelled():
        task.exception()  # a failed refresh leaves the old answer; the next send retries


class RelayedStream:
    """The relay client's stream as a media path: labelled with the relay that carries it, and
    its ConnectionErrors coming out as :class:`~overlay.media.errors.PathLost`."""

    path = "relay"

    def __init__(self, inner: RelayByteStream, relay: RelayRef) -> None:
        self.raw = inner
        self.relay: RelayRef | None = relay

    async def send(self, data: bytes) -> None:
        with losing_path():
            await self.raw.send(data)

    async def recv(self, max_bytes: int = 65536) -> bytes:
        with losing_path():
            return await self.raw.recv(max_bytes)

    async def close(self) -> None:
        await self.raw.close()


#: reserves the relay session of a token (by its hash) over our attachment; raises PathLost
Reserve = Callable[[bytes], Awaitable[None]]


def relay_attempt(host: str, port: int, node_key: bytes, token: bytes, initiator: bool,
                  rate_bps: int, *, voucher: bytes | None = None,
                  reserve: Reserve | None = None,
                  stop_pairing: asyncio.Event | None = None,
                  preconnect: RelayPreconnect | None = None,
                  ) -> Callable[[], Awaitable[MediaStream]]:
    """Connect to a relay as the caller's (A) or callee's (B) half of one session; the
    caller's hello carries ``voucher``. ``reserve``, when given, is called first: a relay
    that is our own supernode admits the session on our reservation. ``stop_pairing`` (the
    callee's): once set, an attempt not paired yet (asking again while the relay does not
    know the token) gives up (:class:`PathLost`). ``preconnect`` (the caller's): the TCP
    connection to this relay it opened while waiting for the answer, if it holds one."""
    relay = RelayRef(node_key)

    async def attempt() -> MediaStream:
        if reserve is not None:
            await reserve(token_hash(token))
        connected = preconnect.take(host, port) if preconnect is not None else None
        stream = await unless_set(
            relay_connect(host, port, token, 0 if initiator else 1, rate_bps,
                          RELAY_CONNECT_TIMEOUT_S, voucher=voucher, relay_id=relay.id,
                          connected=connected),
            stop_pairing, PathLost(PEER_HOLDS_SPARE), discard=discard_later)
        return RelayedStream(stream, relay)

    return attempt


def at_relay_limit(exc: BaseException) -> bool:
    """Whether ``exc`` (a lost path) comes from a relay ending its session at the limit it
    announced (:class:`~overlay.relay.client.RelayLimitReached`) rather than failing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RelayLimitReached):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def udp_attempt(
    udp: UdpState, session_id: bytes, initiator: bool, local: Candidates, remote: Candidates,
    shared: bytes, transcript: bytes, zero_rtt: bool = False,
) -> tuple[str, Callable[[], Awaitable[MediaStream]]] | None:
    """The hole-punching attempt and its name, or None when punching cannot work for these NAT
    types: ``"udp-birthday"`` when exactly one side is symmetric and the other cone or public
    (:mod:`overlay.media.birthday`), else ``"udp-punch"`` (simple punching; also between two
    symmetric sides when one holds a router mapping of its UDP socket; with ``zero_rtt``, the
    caller's QUIC opens with 0-RTT)."""
    mapped = bool(local.mapped_udp or remote.mapped_udp)
    if not remote.udp or not punch_feasible(local.nat, remote.nat, mapped):
        return None
    role = birthday_role(local.nat, remote.nat)

    async def attempt() -> MediaStream:
        if role is not None:
            return await birthday_path(udp.media, session_id, shared, transcript, initiator,
                                       list(local.udp), list(remote.udp), role)
        return await udp_path(udp.media, session_id, shared, transcript, initiator,
                              list(local.udp), list(remote.udp), zero_rtt=zero_rtt)

    return ("udp-birthday" if role is not None else "udp-punch"), attempt

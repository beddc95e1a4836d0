"""The client's UDP media socket (asyncio): one socket for binding, hole punching and QUIC.

One :class:`MediaSocket` per client: a single UDP socket that asks supernodes for its reflexive
address (:mod:`overlay.media.binding`), punches holes (:mod:`overlay.media.punch_io`), and then
carries QUIC (:mod:`overlay.media.quic`). It demultiplexes every datagram it receives:

- ``OVL3`` (DHT envelope): signed RESPONSE envelopes whose msg_id a binding request is waiting for;
- ``OVLP`` (punch probe, :mod:`overlay.media.punch`): to the punching session it names;
- ``OVRD`` (datagram relay control, :mod:`overlay.relay.datagram_client`): to
  :attr:`MediaSocket.relay_control` when the socket is bound at a relay;
- anything else: QUIC, routed by destination connection id (then by source address); a QUIC
  Initial from an address a waiting responder accepts creates its connection. QUIC packets
  that arrive before anyone claims them are kept for a moment (a peer may finish punching
  first and start QUIC at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aioquic._buffer import Buffer
from aioquic.quic.packet import QuicHeader, QuicPacketType, pull_quic_header

from overlay.core.addresses import Address
from overlay.dht.envelope import MAGIC as ENVELOPE_MAGIC
from overlay.dht.envelope import MSG_ID_BYTES, Envelope, EnvelopeError, Kind, open_datagram
from overlay.media.punch import PROBE_MAGIC, Puncher, decode_probe, probe_session_id
from overlay.media.quic.core import QUIC_CID_BYTES
from overlay.relay.datagram_client import is_relay_control

#: QUIC datagrams nobody claimed yet: kept this long, this many
EARLY_KEEP_S = 3.0
EARLY_MAX = 32


class QuicReceiver(Protocol):
    def datagram_received(self, data: bytes, addr: Address) -> None: ...

    def abort(self, reason: str) -> None: ...


#: called with an unclaimed QUIC Initial; returns the receiver that now owns the connection
InitialHandler = Callable[[bytes, Address, QuicHeader], QuicReceiver | None]


@dataclass
class _Acceptor:
    accepts: Callable[[Address], bool]
    on_initial: InitialHandler


@dataclass
class _PunchSession:
    puncher: Puncher
    changed: asyncio.Event
    linger: asyncio.TimerHandle | None = None


class MediaSocket(asyncio.DatagramProtocol):
    """A client's UDP media socket: binding, punching and QUIC on one port (see module doc).

    Create with ``await MediaSocket.open(host, port)``; ``host`` should be the host's own
    address (it becomes the host candidate)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.local_address: Address = ("0.0.0.0", 0)
        self._envelope_waiters: dict[bytes, Callable[[Envelope, Address], None]] = {}
        self._sessions: dict[bytes, _PunchSession] = {}
        self._quic_by_cid: dict[bytes, QuicReceiver] = {}
        self._quic_by_addr: dict[Address, QuicReceiver] = {}
        self._acceptors: list[_Acceptor] = []
        self._early: deque[tuple[float, bytes, Address]] = deque()
        self.stats: Counter[str] = Counter()
        self.closed = False
        #: takes the datagram relay's control messages (a socket bound at a relay for a call)
        self.relay_control: Callable[[bytes, Address], None] | None = None

    @classmethod
    async def open(cls, host: str = "0.0.0.0", port: int = 0) -> MediaSocket:
        loop = asyncio.get_running_loop()
        sock = cls()
        await loop.create_datagram_endpoint(lambda: sock, local_addr=(host, port))
        return sock

    @classmethod
    async def adopt(cls, udp: socket.socket) -> MediaSocket:
        """A MediaSocket on an already bound UDP socket (it takes ownership)."""
        loop = asyncio.get_running_loop()
        sock = cls()
        await loop.create_datagram_endpoint(lambda: sock, sock=udp)
        return sock

    # -- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        name = transport.get_extra_info("sockname")
        self.local_address = (str(name[0]), int(name[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (unreachable candidates) are expected while punching
        self.stats["icmp_error"] += 1

    def sendto(self, data: bytes, addr: Address) -> None:
        if self.transport is None or self.closed:
            return
        try:
            self.transport.sendto(data, addr)
        except OSError:
            self.stats["send_error"] += 1

    async def close(self) -> None:
        """Abort the QUIC connections on this socket (telling their peers), then close."""
        receivers = {id(r): r for r in [*self._quic_by_cid.values(),
                                         *self._quic_by_addr.values()]}
        for receiver in receivers.values():
            receiver.abort("the media socket closed")
        self.closed = True
        for session in self._sessions.values():
            if session.linger is not None:
                session.linger.cancel()
        self._sessions.clear()
        self._quic_by_cid.clear()
        self._quic_by_addr.clear()
        self._acceptors.clear()
        if self.transport is not None:
            self.transport.close()
            await asyncio.sleep(0)

    # -- demultiplexing --------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        peer = (str(addr[0]), int(addr[1]))
        self.stats["datagrams_in"] += 1
        head = data[:4]
        if self.relay_control is not None and is_relay_control(data):
            self.relay_control(data, peer)
            return
        if head in (ENVELOPE_MAGIC, PROBE_MAGIC):
            if self._envelope(data, peer) if head == ENVELOPE_MAGIC else self._probe(data, peer):
                return
            if peer not in self._quic_by_addr:
                # a late duplicate answer, or a probe for a session that ended
                self.stats["stray_" + ("envelope" if head == ENVELOPE_MAGIC else "probe")] += 1
                return
            # else: a QUIC packet from a connected peer that happens to start like ours
        self._quic(data, peer)

    def _envelope(self, data: bytes, addr: Address) -> bool:
        msg_id = data[5:5 + MSG_ID_BYTES]
        waiter = self._envelope_waiters.get(msg_id)
        if waiter is None:  # check before spending a signature verification
            return False
        try:
            env = open_datagram(data)
        except EnvelopeError:
            self.stats["bad_envelope"] += 1
            return True
        if env.kind is Kind.RESPONSE:
            waiter(env, addr)
        return True

    def _probe(self, data: bytes, addr: Address) -> bool:
        session_id = probe_session_id(data)
        session = self._sessions.get(session_id) if session_id is not None else None
        if session is None:
            return False
        if addr in self._quic_by_addr and decode_probe(session.puncher.key, data) is None:
            return False  # not a valid probe: maybe a QUIC packet that looks like one
        now = time.monotonic()
        session.puncher.receive_datagram(data, addr, now)
        for reply, to in session.puncher.datagrams_to_send(now):
            self.sendto(reply, to)
        session.changed.set()
        return True

    def _quic(self, data: bytes, addr: Address) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=QUIC_CID_BYTES)
        except ValueError:
            self.stats["foreign"] += 1
            return
        receiver = self._quic_by_cid.get(header.destination_cid)
        if receiver is None and header.packet_type == QuicPacketType.ONE_RTT:
            # by address only a short-header packet: a long-header one under a connection id
            # no connection of ours holds starts a new connection (the next session's Initial
            # from the same peer, while the last session's connection is still open)
            receiver = self._quic_by_addr.get(addr)
        if receiver is not None:
            receiver.datagram_received(data, addr)
            return
        if header.packet_type == QuicPacketType.INITIAL and self._initial(data, addr, header):
            return
        now = time.monotonic()
        while self._early and (len(self._early) >= EARLY_MAX
                               or now - self._early[0][0] > EARLY_KEEP_S):
            self._early.popleft()
        self._early.append((now, data, addr))
        self.stats["quic_early"] += 1

    def _initial(self, data: bytes, addr: Address, header: QuicHeader) -> bool:
        for acceptor in list(self._acceptors):
            if acceptor.accepts(addr):
                receiver = acceptor.on_initial(data, addr, header)
                if receiver is not None:
                    self._acceptors.remove(acceptor)
                    return True
        return False

    # -- for binding -----------------------------------------------------------------------

    def subscribe(self, msg_id: bytes, callback: Callable[[Envelope, Address], None]) -> None:
        self._envelope_waiters[msg_id] = callback

    def unsubscribe(self, msg_id: bytes) -> None:
        self._envelope_waiters.pop(msg_id, None)

    # -- for punching ----------------------------------------------------------------------

    def add_puncher(self, puncher: Puncher) -> asyncio.Event:
        """Route the session's probes to ``puncher``; the event is set whenever one arrives."""
        old = self._sessions.get(puncher.session_id)
        if old is not None and old.linger is not None:
            old.linger.cancel()
        session = _PunchSession(puncher, asyncio.Event())
        self._sessions[puncher.session_id] = session
        return session.changed

    def remove_puncher(self, session_id: bytes, after: float = 0.0) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        if session.linger is not None:
            session.linger.cancel()
            session.linger = None
        if after <= 0:
            del self._sessions[session_id]
            return

        def drop() -> None:
            if self._sessions.get(session_id) is session:
                del self._sessions[session_id]

        session.linger = asyncio.get_running_loop().call_later(after, drop)

    def puncher(self, session_id: bytes) -> Puncher | None:
        session = self._sessions.get(session_id)
        return session.puncher if session is not None else None

    # -- for QUIC ----------------------------------------------------------------------------

    def add_quic_route(self, receiver: QuicReceiver, cid: bytes | None = None,
                       addr: Address | None = None) -> None:
        if cid is not None:
            self._quic_by_cid[cid] = receiver
        if addr is not None:
            self._quic_by_addr[addr] = receiver

    def remove_quic_routes(self, receiver: QuicReceiver) -> None:
        for cid in [c for c, r in self._quic_by_cid.items() if r is receiver]:
            del self._quic_by_cid[cid]
        for addr in [a for a, r in self._quic_by_addr.items() if r is receiver]:
            del self._quic_by_addr[addr]

    def remove_quic_cid(self, cid: bytes) -> None:
        self._quic_by_cid.pop(cid, None)

    def accept_quic(self, accepts: Callable[[Address], bool],
                    on_initial: InitialHandler) -> Callable[[], None]:
        """Hand the first QUIC Initial from an address ``accepts`` approves (including one that
        already arrived) to ``on_initial``. Returns a function that stops waiting."""
        acceptor = _Acceptor(accepts, on_initial)
        self._acceptors.append(acceptor)
        # replay what came early, in order, from the addresses this acceptor takes
        early = [e for e in self._early if accepts(e[2])]
        for item in early:
            with contextlib.suppress(ValueError):
                self._early.remove(item)
        for _t, data, addr in early:
            self._quic(data, addr)

        def cancel() -> None:
            with contextlib.suppress(ValueError):
                self._acceptors.remove(acceptor)

        return cancel


"""The TCP side of every public node: wire sessions on the same port as the DHT.

Bootstrap nodes and supernodes both answer ``Probe``, ``LookupRequest`` and
``DirectoryRequest`` here (so a client behind a NAT that only lets TCP out can still look users
up; a lookup answers the name owner's records, or every key's in a conflict:
:mod:`overlay.dht.names`); attachment is delegated to an :class:`AttachHandler`, which only
supernodes have.

Every connection is hostile until proven otherwise: per-IP, per-network (/24, IPv6 /48) and
total connection caps checked before any state is allocated, a handshake deadline
(slowloris), a frame cap checked before a body is read (in :mod:`overlay.attach`), a
per-session request rate, and one logged reason for every session that is cut off.

The relay (:mod:`overlay.relay`) shares the port: a wire connection starts with a frame length
(≤ 64 KiB, so its first byte is 0x00), a relay connection with ``b"OVRL"``. The first bytes
decide (the wire handshake deadline bounds the wait for them); a relay connection is then
handed to :attr:`TcpService.relay` and stays counted against the same connection caps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from overlay.attach import (
    Attach,
    Detach,
    DirectoryRequest,
    DirectoryResponse,
    Event,
    HandshakeComplete,
    LookupRequest,
    LookupResponse,
    Message,
    MessageReceived,
    PeerClosed,
    PeerDead,
    ProtocolViolation,
    Refused,
    RefuseReason,
    ServerConnection,
    SessionConfig,
)
from overlay.attach.adapter import SessionProtocol
from overlay.attach.handshake import HandshakeResult
from overlay.attach.messages import MAX_LOOKUP_RECORDS, Alternative
from overlay.core import records
from overlay.core.addresses import network_of
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.tasks import TaskSet
from overlay.core.vivaldi import Coordinate
from overlay.dht import DHTNode
from overlay.node.idle_lookups import IdleLookups
from overlay.node.known_supernodes import KnownSupernodes
from overlay.node.name_lookups import NameLookups
from overlay.relay.budget import BudgetConfig
from overlay.relay.protocol import MAGIC as RELAY_MAGIC
from overlay.relay.server import RelayLink, RelayServer

log = get_logger(__name__)


@dataclass(frozen=True)
class ServiceLimits:
    max_connections: int = 20_000
    max_connections_per_ip: int = 64
    #: connections from one network: an IPv4 /24 or an IPv6 /48 (the prefixes below)
    max_connections_per_subnet: int = 256
    subnet_prefix_v4: int = 24
    subnet_prefix_v6: int = 48
    #: when a connection arrives and the table holds this share of ``max_connections``, the
    #: longest-idle lookup-only session (idle at least ``lookup_evict_min_idle_s``) is closed
    lookup_evict_at: float = 0.9
    lookup_evict_min_idle_s: float = 1.0
    #: a lookup-only session with no request for this long is closed, load or not
    lookup_idle_limit_s: float = 900.0
    #: every wire session's handshake deadline, heartbeat interval and missed-heartbeat limit
    session: SessionConfig = field(default_factory=SessionConfig)
    requests_per_s: float = 20.0
    request_burst: float = 40.0
    #: directory shards are read for clients at most this often (this node's own listing
    #: is taken at every request: it costs no lookup)
    directory_cache_s: float = 30.0


#: records a directory read may bring (its own listing and a few shards)
DIRECTORY_READ_LIMIT = 512


def subnet_of(ip: str, limits: ServiceLimits) -> str:
    """The network ``ip`` is counted in (``limits``' prefixes); an address that does not
    parse is its own network."""
    return network_of(ip, limits.subnet_prefix_v4, limits.subnet_prefix_v6) or ip


@dataclass
class ServedSession:
    proto: ServedProtocol
    opened_at: float
    result: HandshakeResult | None = None
    tokens: float = 0.0
    last_refill: float = 0.0
    attached: records.SignedRecord | None = None
    #: the last name claim this session had published
    claim: records.SignedRecord | None = None
    last_reachability_check: float = float("-inf")

    @property
    def peer(self) -> str:
        """The client's address as ``ip:port``."""
        return f"{self.proto.peer[0]}:{self.proto.peer[1]}"

    def bind(self, logger: FilteringBoundLogger) -> FilteringBoundLogger:
        """``logger`` bound to this session: its peer, and its user and device once the
        handshake named them."""
        if self.result is None:
            return logger.bind(peer=self.peer)
        return logger.bind(peer=self.peer, user=self.result.user, device=self.result.device)

    def allow_request(self, limits: ServiceLimits, now: float) -> bool:
        self.tokens = min(limits.request_burst,
                          self.tokens + (now - self.last_refill) * limits.requests_per_s)
        self.last_refill = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class AttachHandler(Protocol):
    """What a supernode adds to the TCP service."""

    def accepting(self) -> bool: ...

    def load_permille(self) -> int: ...

    async def on_attach(self, session: ServedSession, msg: Attach) -> None: ...

    async def on_detach(self, session: ServedSession, msg: Detach) -> None: ...

    async def on_message(self, session: ServedSession, msg: Message) -> None: ...

    def on_closed(self, session: ServedSession) -> None: ...


@dataclass
class ServiceStats:
    sessions_opened: int = 0
    cut_off: Counter[str] = field(default_factory=Counter)
    lookups: int = 0
    directory_requests: int = 0
    relay_connections: int = 0


class ServedProtocol(SessionProtocol):
    """A SessionProtocol that is refused before any state exists when limits are hit, and
    that hands the connection to the relay when it starts with the relay's magic."""

    service: TcpService
    #: set once the first bytes said "relay": every callback goes there from then on
    relay: RelayLink | None = None
    #: the first bytes, while they could still be the relay's magic
    _sniffed: bytes = b""
    _decided: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        refusal = self.service.admit(ip)
        if refusal is not None:
            label, reason = refusal
            self.service.stats.cut_off[label] += 1
            log.warning("connection_refused", peer=ip, reason=reason)
            self.close_reason = reason
            transport.abort()  # type: ignore[attr-defined]
            return
        super().connection_made(transport)
        self.service.opened(self)

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.data_received(data)
            return
        if not self._decided:
            data = self._sniffed + data
            if data[:1] == RELAY_MAGIC[:1] and len(data) < len(RELAY_MAGIC):
                self._sniffed = data
                return
            self._sniffed = b""
            self._decided = True
            if data.startswith(RELAY_MAGIC):
                self._become_relay(data)
                return
        super().data_received(data)

    def _become_relay(self, first: bytes) -> None:
        if self._timer is not None:  # the wire session's deadlines no longer apply
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        self.conn = None
        self.service.stats.relay_connections += 1
        assert self.transport is not None
        self.relay = self.service.relay.adopt(self.transport)
        self.relay.data_received(first)

    def eof_received(self) -> bool | None:
        if self.relay is not None:
            return self.relay.eof_received()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay is not None:
            self.relay.connection_lost(exc)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.relay is not None:
            self.relay.pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.relay is not None:
            self.relay.resume_writing()


class TcpService:
    def __init__(
        self,
        identity: Identity,
        dht: DHTNode,
        limits: ServiceLimits | None = None,
        attach_handler: AttachHandler | None = None,
        relay: RelayServer | None = None,
    ) -> None:
        self.identity = identity
        #: relay connections go here; by default a relay that refuses ("relay disabled")
        self.relay = relay or RelayServer(BudgetConfig())
        self.dht = dht
        self.limits = limits or ServiceLimits()
        self.attach_handler = attach_handler
        self.sessions: dict[ServedProtocol, ServedSession] = {}
        self.per_ip: Counter[str] = Counter()
        self.per_subnet: Counter[str] = Counter()
        self.idle_lookups: IdleLookups[ServedProtocol] = IdleLookups()
        self.stats = ServiceStats()
        self._server: asyncio.Server | None = None
        #: name lookups, shared with signalling and kept a few seconds
        self.names = NameLookups(dht)
        #: the supernodes this node knows from its directory reads, and when it last read
        self.known = KnownSupernodes()
        self._directory_read_at = float("-inf")
        #: this node's Vivaldi coordinate (a supernode sets it): samples are nearest first
        self.coordinate: Callable[[], Coordinate] | None = None
        self._rng = random.Random()
        self._tasks = TaskSet()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_protocol, host, port, backlog=1024)
        self._tasks.spawn(self._expire_idle_lookups())

    def _make_protocol(self) -> ServedProtocol:
        proto = ServedProtocol(self._make_connection, self._on_event, self._on_lost)
        proto.service = self
        return proto

    def _make_connection(self, now: float) -> ServerConnection:
        handler = self.attach_handler
        return ServerConnection(
            self.identity,
            now=now,
            config=self.limits.session,
            accepting=handler.accepting() if handler else False,
            load_permille=handler.load_permille() if handler else 1000,
        )

    def admit(self, ip: str) -> tuple[str, str] | None:
        """None to admit, else (metric label, reason for the log). Under pressure the
        longest-idle lookup-only session makes room first."""
        if self.per_ip[ip] >= self.limits.max_connections_per_ip:
            return "per_ip_limit", (
                f"more than {self.limits.max_connections_per_ip} connections from {ip}")
        subnet = subnet_of(ip, self.limits)
        if self.per_subnet[subnet] >= self.limits.max_connections_per_subnet:
            return "per_subnet_limit", (
                f"more than {self.limits.max_connections_per_subnet} connections from {subnet}")
        limits = self.limits
        if len(self.sessions) >= max(1, int(limits.max_connections * limits.lookup_evict_at)):
            idle = self.idle_lookups.longest_idle(time.monotonic(),
                                                  limits.lookup_evict_min_idle_s)
            if idle is not None:
                self._evict(idle, "idle lookup-only session closed for a new connection",
                            "lookup_idle_evicted")
        if len(self.sessions) >= limits.max_connections:
            return "connection_limit", f"{limits.max_connections} connections open"
        return None

    def _evict(self, proto: ServedProtocol, reason: str, label: str) -> None:
        """Close a session and free its slot now (not when its transport is gone)."""
        session = self.sessions.get(proto)
        if session is not None:
            self._on_lost(proto)
            self.cut_off(session, reason, label, expected=True)

    async def _expire_idle_lookups(self) -> None:
        limit = self.limits.lookup_idle_limit_s
        while True:
            await asyncio.sleep(min(30.0, limit / 4))
            for proto in self.idle_lookups.idle_for(time.monotonic(), limit):
                self._evict(proto, f"lookup-only session idle for {limit:g} s",
                            "lookup_idle_limit")

    def pre_handshake_bytes(self) -> int:
        """What connections that have not completed the handshake make this node buffer."""
        return sum(proto.pre_handshake_bytes for proto in self.sessions)

    def opened(self, proto: ServedProtocol) -> None:
        now = time.monotonic()
        self.sessions[proto] = ServedSession(
            proto, now, tokens=self.limits.request_burst, last_refill=now
        )
        self.per_ip[proto.peer[0]] += 1
        self.per_subnet[subnet_of(proto.peer[0], self.limits)] += 1
        self.stats.sessions_opened += 1

    def _on_lost(self, proto: SessionProtocol) -> None:
        assert isinstance(proto, ServedProtocol)
        session = self.sessions.pop(proto, None)
        if session is None:
            return
        self.idle_lookups.remove(proto)
        ip = proto.peer[0]
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        subnet = subnet_of(ip, self.limits)
        self.per_subnet[subnet] -= 1
        if self.per_subnet[subnet] <= 0:
            del self.per_subnet[subnet]
        if self.attach_handler is not None:
            self.attach_handler.on_closed(session)

    def cut_off(
        self, session: ServedSession, reason: str, label: str, expected: bool = False
    ) -> None:
        """Close a session for ``reason``; ``expected`` ends (e.g. "full") log at info."""
        self.stats.cut_off[label] += 1
        slog = session.bind(log)
        emit = slog.info if expected else slog.warning
        emit("session_cut_off", reason=reason)
        session.proto.close(reason)

    def _on_event(self, proto: SessionProtocol, event: Event) -> None:
        assert isinstance(proto, ServedProtocol)
        session = self.sessions.get(proto)
        if session is None:
            return
        if isinstance(event, ProtocolViolation):
            self.stats.cut_off[event.error.reason] += 1
            session.bind(log).warning("session_cut_off", reason=event.reason)
        elif isinstance(event, PeerDead):
            self.stats.cut_off["heartbeat_timeout"] += 1
            session.bind(log).info("session_dead", silent_s=round(event.silent_s, 1))
        elif isinstance(event, HandshakeComplete):
            session.result = event.result
            if event.result.lookup_only:
                self.idle_lookups.add(proto, time.monotonic())
        elif isinstance(event, MessageReceived):
            if not session.allow_request(self.limits, time.monotonic()):
                self.cut_off(session, "request rate exceeded", "rate_limited")
                return
            self.idle_lookups.busy(proto)
            self._spawn(self._handle(session, event.message))
        elif isinstance(event, PeerClosed):
            pass

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    async def _handle(self, session: ServedSession, msg: Message) -> None:
        try:
            if isinstance(msg, LookupRequest):
                self.stats.lookups += 1
                # the owner's records when the holders' majority decides; every key's in
                # a conflict (the client then sees several keys and says so)
                # asked of the network (a client polling for a change sees it at once), and
                # kept for the signalling that usually follows
                named = await self.names.fresh(msg.user)
                wires = tuple(s.wire for s in named.records[:MAX_LOOKUP_RECORDS])
                session.proto.send(LookupResponse(msg.request_id, wires))
            elif isinstance(msg, DirectoryRequest):
                self.stats.directory_requests += 1
                found = await self.directory()
                wires = tuple(s.wire for s in found[:MAX_LOOKUP_RECORDS])
                session.proto.send(DirectoryResponse(msg.request_id, wires))
            elif self.attach_handler is None:
                if isinstance(msg, Attach):
                    session.proto.send(Refused(
                        int(RefuseReason.NOT_ALLOWED),
                        "this is a bootstrap node, not a supernode",
                        await self.alternatives(),
                    ))
                    session.proto.close("not a supernode")
            elif isinstance(msg, Attach):
                await self.attach_handler.on_attach(session, msg)
            elif isinstance(msg, Detach):
                await self.attach_handler.on_detach(session, msg)
            else:
                await self.attach_handler.on_message(session, msg)
        except Exception:
            session.bind(log).exception("session_handler_failed")
            session.proto.close("internal error")
        finally:
            self.idle_lookups.done(session.proto, time.monotonic())

    async def directory(self) -> list[records.SignedRecord]:
        """Supernode records for a client: the known supernodes
        (:mod:`overlay.node.known_supernodes`) nearest to this node first, then chance. They
        come from :meth:`overlay.dht.DHTNode.supernodes` reads (proven, vouched for: this
        node's own listing and a few random shards), at most one per ``directory_cache_s``,
        and from this node's own listing at every call."""
        now = time.monotonic()
        near = self.coordinate() if self.coordinate is not None else None
        if now - self._directory_read_at >= self.limits.directory_cache_s or not self.known:
            found = await self.dht.supernodes(DIRECTORY_READ_LIMIT)
            self._directory_read_at = now
        else:
            found = self.dht.listed_supernodes()
        self.known.add(found, time.time(), near, self._rng)
        return self.known.sample(MAX_LOOKUP_RECORDS, time.time(), near, self._rng)

    async def alternatives(self, exclude: bytes = b"") -> tuple[Alternative, ...]:
        out = []
        for signed in await self.directory():
            r = signed.record
            if not isinstance(r, records.SupernodeRecord) or r.node_key == exclude:
                continue
            if r.max_clients and r.load >= r.max_clients:
                continue
            out.append(Alternative(r.host, r.port, r.node_key))
        return tuple(out[:8])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for proto in list(self.sessions):
            proto.abort_after_flush()
        self._tasks.cancel_all()
        if self._server is not None:
            await self._server.wait_closed()

"""Thin asyncio adapters for the sans-IO wire sessions (:mod:`overlay.attach`).

:class:`SessionProtocol` drives one ``ClientConnection``/``ServerConnection`` over one TCP
transport in the shape of aioquic's ``asyncio/protocol.py``: bytes in go to
``receive_data``, the timer fires ``handle_timer``, and :meth:`SessionProtocol.transmit`
writes every byte the session has due (in order) and re-arms the timer at ``get_timer()``;
until the handshake, input passes :mod:`overlay.attach.prehandshake` (small frames only).
:class:`ClientSession` adds the client's calls (connect, probe, lookup, attach...) on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from overlay.attach import (
    Attach,
    AttachOk,
    ClientConnection,
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
    ProbeAnswered,
    ProtocolViolation,
    ReachabilityRequest,
    ReachabilityResult,
    Refused,
    RelayReserve,
    RelayReserved,
    SessionConfig,
    Signal,
    SignalResult,
)
from overlay.attach.connection import Connection
from overlay.attach.errors import AttachError, FrameTooLarge
from overlay.attach.messages import Alternative
from overlay.attach.prehandshake import PreHandshakeGate, error_frame
from overlay.attach.tcp_keepalive import TcpKeepalive, enable_keepalive
from overlay.attach.verification import verify_lookup_response
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.records import (
    RecordError,
    SignedRecord,
    SupernodeRecord,
    verify,
)

log = get_logger(__name__)

EventHandler = Callable[["SessionProtocol", Event], None]


class SessionProtocol(asyncio.Protocol):
    """One TCP connection driven by one sans-IO session."""

    def __init__(
        self,
        make_connection: Callable[[float], Connection],
        on_event: EventHandler,
        on_lost: Callable[[SessionProtocol], None] | None = None,
    ) -> None:
        self._make_connection = make_connection
        self._on_event = on_event
        self._on_lost = on_lost
        self.conn: Connection | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        #: this session's logger, bound to ``peer=host:port`` once connected
        self.log = log
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop = asyncio.get_event_loop()
        self.lost = asyncio.Event()
        self.close_reason = ""
        self._write_ok = asyncio.Event()
        self._write_ok.set()
        #: input goes through this one frame at a time until the handshake completes
        self._gate: PreHandshakeGate | None = PreHandshakeGate()

    @property
    def pre_handshake_bytes(self) -> int:
        """Bytes buffered for the peer's frame in progress, before the handshake."""
        return self._gate.held if self._gate is not None else 0

    # asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        self.log = log.bind(peer=f"{self.peer[0]}:{self.peer[1]}")
        self.conn = self._make_connection(self._loop.time())
        self.transmit()

    def data_received(self, data: bytes) -> None:
        if self.conn is None or self.conn.closed:
            return
        if self._gate is None:  # the handshake is done (it completes only in here)
            self._process(self.conn.receive_data(data, self._loop.time()))
            return
        fed = 0
        try:
            for piece in self._gate.pieces(data):
                self._process(self.conn.receive_data(piece, self._loop.time()))
                fed += len(piece)
                if self.conn.closed:
                    return
                if self.conn.established:
                    self._gate = None
                    if fed < len(data):
                        self._process(self.conn.receive_data(data[fed:], self._loop.time()))
                    return
        except FrameTooLarge as exc:
            self._refuse_pre_handshake(exc)

    def _refuse_pre_handshake(self, exc: FrameTooLarge) -> None:
        """As the session does for any violation: Error, ProtocolViolation, close."""
        assert self.conn is not None
        self._write(error_frame(exc))
        self.conn.close(str(exc))
        self._gate = None
        self.close_reason = self.close_reason or f"protocol violation: {exc}"
        self._on_event(self, ProtocolViolation(str(exc), exc))
        self.abort_after_flush()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.close_reason:
            self.close_reason = str(exc) if exc else "connection closed"
        self._write_ok.set()
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost(self)

    def pause_writing(self) -> None:
        self._write_ok.clear()

    def resume_writing(self) -> None:
        self._write_ok.set()

    # driving the session ----------------------------------------------------------------

    def transmit(self, returned: bytes = b"") -> None:
        """Write every byte the session has due and re-arm its timer at ``get_timer()``.

        Session calls such as ``send`` or ``start_handshake`` return (and so drain) the bytes
        due; pass those as ``returned`` and they go out first.
        """
        if self.conn is None:
            return
        self._write(returned)
        self._write(self.conn.data_to_send())
        timer_at = self.conn.get_timer()
        if timer_at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = timer_at
        if timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _handle_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.conn is None or self.conn.closed:
            return
        self._process(self.conn.handle_timer(self._loop.time()))

    def _process(self, events: list[Event]) -> None:
        """What the input or timer produced goes out first, then the events are handled."""
        assert self.conn is not None
        self.transmit()
        for event in events:
            closing = isinstance(event, ProtocolViolation | PeerDead | PeerClosed)
            if closing and not self.close_reason:
                self.close_reason = _describe(event)
                self.log.debug("attach_session_closing", reason=self.close_reason)
            self._on_event(self, event)
        if self.conn.closed:
            self.abort_after_flush()
        else:
            self.transmit()

    def send(self, msg: Message) -> None:
        """Send a sealed message; ignored once the session is closed."""
        if self.conn is None or self.conn.closed:
            return
        self.transmit(self.conn.send(msg))

    async def drained(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self._write_ok.wait()

    def close(self, reason: str = "") -> None:
        """Say goodbye (when established) and close after flushing."""
        if self.conn is not None and not self.conn.closed:
            self.close_reason = self.close_reason or reason or "closed locally"
            self.transmit(self.conn.close(reason))
        self.abort_after_flush()

    def abort_after_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _describe(event: Event) -> str:
    if isinstance(event, ProtocolViolation):
        return f"protocol violation: {event.reason}"
    if isinstance(event, PeerDead):
        return f"peer silent for {event.silent_s:.1f}s"
    if isinstance(event, PeerClosed):
        return f"peer closed: {event.message}"
    return type(event).__name__


# --- client side --------------------------------------------------------------------------


class SessionError(AttachError):
    """The supernode could not be reached, failed the handshake, or closed the session."""


class AttachRefused(SessionError):
    def __init__(self, refused: Refused) -> None:
        super().__init__(f"refused ({refused.reason_code}): {refused.message}")
        self.refused = refused

    @property
    def alternatives(self) -> tuple[Alternative, ...]:
        return self.refused.alternatives


@dataclass(frozen=True)
class ProbeResult:
    host: str
    port: int
    rtt_s: float
    accepting: bool
    load_permille: int


async def probe(
    host: str, port: int, identity: Identity, *, timeout: float = 2.0, count: int = 2
) -> ProbeResult:
    """Measure the TCP round trip to a supernode with ``count`` probes (best one counts)."""
    loop = asyncio.get_running_loop()
    # (rtt measured with perf_counter: uvloop's loop.time() only has millisecond resolution)
    answers: list[tuple[float, ProbeAnswered]] = []
    sent_at = [0.0]
    done = asyncio.Event()

    def send_probe(proto: SessionProtocol) -> None:
        assert isinstance(proto.conn, ClientConnection)
        sent_at[0] = time.perf_counter()
        proto.transmit(proto.conn.send_probe(loop.time()))

    def on_event(proto: SessionProtocol, event: Event) -> None:
        if isinstance(event, ProbeAnswered):
            answers.append((time.perf_counter() - sent_at[0], event))
            if len(answers) >= count:
                done.set()
            elif proto.conn is not None:
                send_probe(proto)
        elif isinstance(event, ProtocolViolation | PeerClosed):
            done.set()

    def make(now: float) -> ClientConnection:
        return ClientConnection(identity, expected_node_key=None, now=now, lookup_only=True)

    try:
        async with asyncio.timeout(timeout):
            transport, proto = await loop.create_connection(
                lambda: SessionProtocol(make, on_event), host, port
            )
            try:
                send_probe(proto)
                await done.wait()
            finally:
                transport.close()
    except (OSError, TimeoutError) as exc:
        raise SessionError(f"{host}:{port} did not answer a probe: {exc or 'timeout'}") from None
    if not answers:
        raise SessionError(f"{host}:{port} closed without answering a probe")
    rtt, best = min(answers, key=lambda a: a[0])
    return ProbeResult(host, port, rtt, best.reply.accepting, best.reply.load_permille)


class ClientSession:
    """An authenticated session with a supernode (or a lookup-only one with any public node)."""

    def __init__(self, proto: SessionProtocol, node_key: bytes) -> None:
        self.proto = proto
        self.node_key = node_key
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._attach: asyncio.Future[Message] | None = None
        #: called with every message nobody waits for (SignalDelivery, Moving, ...)
        self.on_message: Callable[[Message], None] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        identity: Identity,
        *,
        expected_node_key: bytes | None,
        user: str = "",
        device: str = "",
        lookup_only: bool = False,
        config: SessionConfig | None = None,
        timeout: float = 5.0,
        keepalive: TcpKeepalive | None = None,
    ) -> ClientSession:
        """A session with the supernode at ``host:port``; ``keepalive``: end it within
        seconds once that host falls silent (:mod:`overlay.attach.tcp_keepalive`)."""
        loop = asyncio.get_running_loop()
        established: asyncio.Future[bytes] = loop.create_future()
        holder: list[ClientSession] = []

        def on_event(proto: SessionProtocol, event: Event) -> None:
            if isinstance(event, HandshakeComplete):
                if not established.done():
                    established.set_result(event.result.node_key)
            elif isinstance(event, MessageReceived):
                if holder:
                    holder[0]._dispatch(event.message)
            elif isinstance(event, ProtocolViolation | PeerClosed | PeerDead):
                if not established.done():
                    established.set_exception(SessionError(_describe(event)))

        def on_lost(proto: SessionProtocol) -> None:
            if not established.done():
                established.set_exception(SessionError(proto.close_reason))
            if holder:
                holder[0]._fail_pending(SessionError(proto.close_reason))

        def make(now: float) -> ClientConnection:
            return ClientConnection(
                identity, expected_node_key=expected_node_key, now=now, user=user,
                device=device, lookup_only=lookup_only, config=config,
            )

        try:
            async with asyncio.timeout(timeout):
                transport, proto = await loop.create_connection(
                    lambda: SessionProtocol(make, on_event, on_lost), host, port
                )
                if keepalive is not None:
                    enable_keepalive(transport, keepalive)
                assert isinstance(proto.conn, ClientConnection)
                proto.transmit(proto.conn.start_handshake())
                node_key = await established
        except TimeoutError:
            with contextlib.suppress(Exception):
                transport.close()
            raise SessionError(f"{host}:{port}: handshake timed out") from None
        except OSError as exc:
            raise SessionError(f"{host}:{port}: {exc.strerror or exc}") from None
        session = cls(proto, node_key)
        holder.append(session)
        return session

    # dispatch ---------------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        request_id = getattr(msg, "request_id", None)
        answers = (LookupResponse | DirectoryResponse | ReachabilityResult | SignalResult
                   | RelayReserved)
        if isinstance(msg, answers) and request_id in self._pending:
            future = self._pending.pop(request_id)
            if not future.done():
                future.set_result(msg)
            return
        if isinstance(msg, AttachOk | Refused) and self._attach is not None:
            if not self._attach.done():
                self._attach.set_result(msg)
            self._attach = None
            return
        if self.on_message is not None:
            self.on_message(msg)

    def _fail_pending(self, exc: Exception) -> None:
        for future in [*self._pending.values(), self._attach]:
            if future is not None and not future.done():
                future.set_exception(exc)
        self._pending.clear()

    async def _request(self, msg_factory: Callable[[int], Message], timeout: float) -> Message:
        if self.closed:
            raise SessionError(f"session closed: {self.proto.close_reason}")
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.proto.send(msg_factory(request_id))
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            self._pending.pop(request_id, None)
            raise SessionError("no answer in time") from None

    # calls ------------------------------------------------------------------------------

    async def lookup(
        self, user: str, timeout: float = 5.0, claims: bool = False
    ) -> list[SignedRecord]:
        """The user's presence records (with ``claims``, name claims too), each verified here
        (the node is not trusted)."""
        reply = await self._request(lambda rid: LookupRequest(rid, user), timeout)
        assert isinstance(reply, LookupResponse)
        return verify_lookup_response(reply, user, claims=claims)

    async def directory(self, timeout: float = 5.0) -> list[SignedRecord]:
        """Signed supernode records, each verified here."""
        reply = await self._request(DirectoryRequest, timeout)
        assert isinstance(reply, DirectoryResponse)
        now = time.time()
        found = []
        for wire in reply.records:
            with contextlib.suppress(RecordError):
                signed = verify(wire, now)
                if isinstance(signed.record, SupernodeRecord):
                    found.append(signed)
        return found

    async def check_reachability(self, port: int, timeout: float = 10.0) -> ReachabilityResult:
        """Ask the supernode to dial back to our source IP on ``port`` (TCP and UDP)."""
        reply = await self._request(lambda rid: ReachabilityRequest(rid, port), timeout)
        assert isinstance(reply, ReachabilityResult)
        return reply

    async def reserve_relay(self, token_hash: bytes, timeout: float = 5.0) -> RelayReserved:
        """Reserve one relay session on this supernode for the token that hashes to
        ``token_hash`` (the caller's hello then needs no voucher)."""
        reply = await self._request(lambda rid: RelayReserve(rid, token_hash), timeout)
        assert isinstance(reply, RelayReserved)
        return reply

    async def signal(
        self, to_user: str, payload: bytes, to_device: str = "", timeout: float = 10.0
    ) -> SignalResult:
        """Have the supernode forward ``payload`` to ``to_user``'s device(s)."""
        reply = await self._request(lambda rid: Signal(rid, to_user, to_device, payload), timeout)
        assert isinstance(reply, SignalResult)
        return reply

    async def attach(
        self, presence: SignedRecord, timeout: float = 5.0, claim: SignedRecord | None = None
    ) -> AttachOk:
        """Ask the supernode to publish ``presence`` (and the name ``claim``); raises
        :class:`AttachRefused`."""
        if self.closed:
            raise SessionError(f"session closed: {self.proto.close_reason}")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._attach = future
        self.proto.send(Attach(presence.wire, claim.wire if claim is not None else b""))
        try:
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise SessionError("no answer to attach in time") from None
        if isinstance(reply, Refused):
            raise AttachRefused(reply)
        assert isinstance(reply, AttachOk)
        return reply

    def refresh(self, presence: SignedRecord, claim: SignedRecord | None = None) -> None:
        """Hand the supernode a newer presence record (and the name claim). No answer is
        expected; a ``Refused`` arrives through :attr:`on_message`."""
        self.proto.send(Attach(presence.wire, claim.wire if claim is not None else b""))

    def detach(self, offline: SignedRecord) -> None:
        """Clean exit: the supernode publishes ``offline`` and the session ends."""
        self.proto.send(Detach(offline.wire))

    def send(self, msg: Message) -> None:
        self.proto.send(msg)

    @property
    def closed(self) -> bool:
        return self.proto.lost.is_set() or self.proto.conn is None or self.proto.conn.closed

    async def wait_closed(self) -> str:
        await self.proto.lost.wait()
        return self.proto.close_reason

    def close(self, reason: str = "bye") -> None:
        """Say goodbye and close."""
        self.proto.close(reason)

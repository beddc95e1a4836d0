"""Sans-IO connection sessions: framing + probes + handshake + secure channel + liveness.

The vocabulary is aioquic's ``QuicConnection``, stream flavour (bytes, not datagrams)::

    conn = ClientConnection(identity, expected_node_key=key, user="alice", device="phone",
                            now=loop.time())
    transport.write(conn.start_handshake())
    # on data:     events = conn.receive_data(data, loop.time())
    # on a timer:  events = conn.handle_timer(loop.time())   (schedule at conn.get_timer())
    # after either: transport.write(conn.data_to_send()); close the transport if conn.closed

``send(msg)``, ``ping()``, ``close()``, ``send_probe()`` and ``start_handshake()`` return
every byte that is due, in order (including any queued by ``receive_data``/``handle_timer``),
so writing whatever any method returns, in call order, keeps the stream correct. The events
are in :mod:`overlay.attach.events`; the record checks a session's owner applies to
``Attach`` and ``LookupResponse`` in :mod:`overlay.attach.verification`.

Wire messages by phase (tags and fields in :mod:`overlay.attach.messages`):

* before the handshake, plaintext: client ``Probe``* then ``ClientHello``, ``ClientAuth``;
  server ``ProbeReply``*, ``ServerHello``; either side ``Error`` (then closes).
* after it, sealed: client ``Attach``, ``LookupRequest``, ``Signal``; server ``AttachOk``,
  ``Refused``, ``Moving``, ``LookupResponse``, ``SignalDelivery``, ``SignalResult``;
  either side ``Ping``/``Pong`` (answered and tracked here), ``Goodbye``, ``Error``.
  A ``LOOKUP_ONLY`` client may send only ``LookupRequest``, ``Ping``/``Pong``, ``Goodbye``
  and ``Error``.

Liveness: a side that has heard nothing authenticated for one heartbeat interval sends a
``Ping`` (``HeartbeatDue``) and again each further interval; after ``max_missed_heartbeats``
silent intervals it reports ``PeerDead`` and closes. The client adopts the interval the
supernode announces in ``AttachOk``; the supernode adopts the one it sends.

Any protocol violation (garbage, oversize frame, bad handshake, failed decryption, a
message not allowed in this state or direction, handshake deadline) yields one
``ProtocolViolation``, queues an ``Error`` for the peer and closes the session: all later
input is ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

from overlay.attach.channel import SecureChannel
from overlay.attach.errors import (
    DecryptError,
    FrameError,
    FrameTooLarge,
    HandshakeTimeout,
    InvalidState,
    ProtocolError,
    UnexpectedMessage,
)
from overlay.attach.events import (
    Event,
    HandshakeComplete,
    HeartbeatDue,
    MessageReceived,
    PeerClosed,
    PeerDead,
    PongReceived,
    ProbeAnswered,
    ProtocolViolation,
)
from overlay.attach.frames import MAX_FRAME_BYTES, FrameDecoder, encode_frame
from overlay.attach.handshake import (
    PROTOCOL_VERSION,
    ClientHandshake,
    HandshakeResult,
    ServerHandshake,
)
from overlay.attach.messages import (
    CLIENT_SENDS,
    LOOKUP_ONLY_SENDS,
    MAX_TEXT_CHARS,
    NONCE_BYTES,
    SERVER_SENDS,
    AttachOk,
    ClientAuth,
    ClientHello,
    Error,
    Goodbye,
    HelloFlags,
    Message,
    Ping,
    Pong,
    Probe,
    ProbeReply,
    ServerHello,
    decode,
    encode,
)
from overlay.core.identity import Identity

_MAX_OUTSTANDING_PINGS = 16


@dataclass(frozen=True)
class SessionConfig:
    handshake_timeout_s: float = 10.0
    heartbeat_interval_s: float = 30.0
    max_missed_heartbeats: int = 3
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: Probes a client may send (and a server will answer) before its ClientHello.
    max_probes: int = 8

    def __post_init__(self) -> None:
        if self.handshake_timeout_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_missed_heartbeats < 1 or self.max_probes < 0:
            raise ValueError("max_missed_heartbeats must be >= 1 and max_probes >= 0")


class ConnectionState(Enum):
    IDLE = "idle"  # client: before start_handshake (may probe); server: awaiting ClientHello
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


def _clip(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:MAX_TEXT_CHARS]



class Connection:
    """What both ends of an attachment session share; use :class:`ClientConnection` or
    :class:`ServerConnection`."""

    _peer_name = "peer"

    def __init__(self, *, now: float, config: SessionConfig) -> None:
        self.config = config
        self.state = ConnectionState.IDLE
        self.result: HandshakeResult | None = None
        self.close_reason: str | None = None
        self.heartbeat_interval_s = config.heartbeat_interval_s
        self._decoder = FrameDecoder(config.max_frame_bytes)
        self._out = bytearray()
        self._channel: SecureChannel | None = None
        self._opened_at = now
        self._last_received = now
        self._pings_in_silence = 0
        self._ping_seq = 0
        self._pings: dict[int, float] = {}

    # -- public API (aioquic's names: receive_data, data_to_send, get_timer, handle_timer) --

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    @property
    def established(self) -> bool:
        return self.state is ConnectionState.ESTABLISHED

    def data_to_send(self) -> bytes:
        """Drain and return every byte queued for the peer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def send(self, msg: Message) -> bytes:
        """Seal ``msg``; return all bytes due (earlier queued bytes first)."""
        if self.state is not ConnectionState.ESTABLISHED:
            raise InvalidState(f"cannot send {type(msg).__name__} in state {self.state.value}")
        if type(msg) in (Ping, Pong):
            raise InvalidState("Ping/Pong are managed by the session; use ping()")
        if type(msg) not in self._may_send():
            raise InvalidState(f"this side may not send {type(msg).__name__}")
        self._queue_sealed(msg)
        self._sent(msg)
        if isinstance(msg, Goodbye | Error):
            self._close(f"we closed: {msg}")
        return self.data_to_send()

    def ping(self, now: float) -> bytes:
        """Send a Ping now (e.g. to measure RTT); the answer is a ``PongReceived`` event."""
        if self.state is not ConnectionState.ESTABLISHED:
            raise InvalidState(f"cannot ping in state {self.state.value}")
        self._queue_ping(now)
        return self.data_to_send()

    def close(self, reason: str = "") -> bytes:
        """Close; say Goodbye first if the channel is up. Returns the final bytes."""
        if self.state is ConnectionState.ESTABLISHED:
            self._queue_sealed(Goodbye(_clip(reason)))
        if not self.closed:
            self._close(reason or "closed locally")
        return self.data_to_send()

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; return what happened. Ignored once closed."""
        if self.closed:
            return []
        events: list[Event] = []
        pending: FrameError | None = None
        try:
            frames = self._decoder.feed(data)
        except FrameTooLarge as exc:
            frames, pending = exc.complete_frames, exc
        except FrameError as exc:
            frames, pending = [], exc
        for body in frames:
            if self.closed:
                break
            try:
                self._on_frame(body, now, events)
            except ProtocolError as exc:
                self._violate(events, exc)
        if pending is not None and not self.closed:
            self._violate(events, pending)
        return events

    def handle_timer(self, now: float) -> list[Event]:
        """Run what is due by ``now``: handshake deadline, heartbeats, dead-peer detection."""
        if self.closed:
            return []
        events: list[Event] = []
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return events
        if self.state is not ConnectionState.ESTABLISHED:
            limit = self.config.handshake_timeout_s
            self._violate(events, HandshakeTimeout(f"handshake not complete within {limit:g} s"))
            return events
        silent = now - self._last_received
        # At least one more interval has passed (by the deadline); more if the timer was late.
        missed = max(self._pings_in_silence + 1, int(silent // self.heartbeat_interval_s))
        if missed >= self.config.max_missed_heartbeats:
            events.append(PeerDead(silent, missed))
            self._close(f"{self._peer_name} silent for {silent:.1f} s ({missed} heartbeats)")
        else:
            self._pings_in_silence = missed
            self._queue_ping(now)
            events.append(HeartbeatDue(missed))
        return events

    def get_timer(self) -> float | None:
        """When ``handle_timer`` next has something to do (None once closed)."""
        if self.closed:
            return None
        if self.state is not ConnectionState.ESTABLISHED:
            return self._opened_at + self.config.handshake_timeout_s
        return self._last_received + self.heartbeat_interval_s * (self._pings_in_silence + 1)

    # -- subclass hooks --

    def _may_send(self) -> frozenset[type[Message]]:
        raise NotImplementedError

    def _peer_may_send(self) -> frozenset[type[Message]]:
        raise NotImplementedError

    def _on_plaintext(self, msg: Message, body: bytes, now: float, events: list[Event]) -> None:
        raise NotImplementedError

    def _received(self, msg: Message) -> None:
        """Called for each authenticated application message before it is reported."""

    def _sent(self, msg: Message) -> None:
        """Called for each application message sent."""

    # -- internals --

    def _close(self, reason: str) -> None:
        self.state = ConnectionState.CLOSED
        self.close_reason = reason

    def _violate(self, events: list[Event], error: ProtocolError) -> None:
        reason = str(error) or error.reason
        events.append(ProtocolViolation(reason, error))
        try:
            self._queue_error(Error(int(error.code), _clip(reason)))
        except ProtocolError:  # pragma: no cover - an Error always fits
            pass
        self._close(f"protocol violation: {reason}")

    def _queue_error(self, msg: Error) -> None:
        if self.state is ConnectionState.ESTABLISHED:
            self._queue_sealed(msg)
        else:
            self._queue_plain(msg)

    def _queue_plain(self, msg: Message) -> None:
        self._out += encode_frame(encode(msg), self.config.max_frame_bytes)

    def _queue_sealed(self, msg: Message) -> None:
        assert self._channel is not None
        self._out += self._channel.seal(msg)

    def _queue_ping(self, now: float) -> None:
        seq = self._ping_seq
        self._ping_seq += 1
        self._pings[seq] = now
        while len(self._pings) > _MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        self._queue_sealed(Ping(seq, float(now)))

    def _establish(self, result: HandshakeResult, now: float, events: list[Event]) -> None:
        self.result = result
        self._channel = SecureChannel.from_handshake(
            result, max_frame_bytes=self.config.max_frame_bytes
        )
        self.state = ConnectionState.ESTABLISHED
        self._last_received = now
        events.append(HandshakeComplete(result))

    def _on_frame(self, body: bytes, now: float, events: list[Event]) -> None:
        if self.state is ConnectionState.ESTABLISHED:
            self._on_sealed(body, now, events)
        else:
            self._on_plaintext(decode(body), body, now, events)

    def _on_sealed(self, body: bytes, now: float, events: list[Event]) -> None:
        assert self._channel is not None
        first = self._channel.received == 0
        try:
            msg = self._channel.open(body)
        except DecryptError:
            # The peer may have refused our handshake with a plaintext Error.
            if first:
                try:
                    plain = decode(body)
                except ProtocolError:
                    plain = None
                if isinstance(plain, Error):
                    self._peer_closed(plain, False, events)
                    return
            raise
        self._last_received = now
        self._pings_in_silence = 0
        if type(msg) not in self._peer_may_send():
            raise UnexpectedMessage(f"{self._peer_name} may not send {type(msg).__name__}")
        if isinstance(msg, Ping):
            self._queue_sealed(Pong(msg.seq, msg.sent_at))
        elif isinstance(msg, Pong):
            sent = self._pings.pop(msg.seq, None)
            if sent is None:
                raise UnexpectedMessage(f"Pong {msg.seq} answers no Ping of ours")
            events.append(PongReceived(msg.seq, now - sent))
        elif isinstance(msg, Goodbye | Error):
            self._peer_closed(msg, True, events)
        else:
            self._received(msg)
            events.append(MessageReceived(msg))

    def _peer_closed(self, msg: Goodbye | Error, authenticated: bool, events: list[Event]) -> None:
        events.append(PeerClosed(msg, authenticated))
        self._close(f"{self._peer_name} closed: {msg}")


class ClientConnection(Connection):
    """The client end of an attachment (or lookup-only) connection to a supernode."""

    _peer_name = "supernode"

    def __init__(
        self,
        identity: Identity,
        *,
        expected_node_key: bytes | None,
        now: float,
        user: str = "",
        device: str = "",
        lookup_only: bool = False,
        config: SessionConfig | None = None,
    ) -> None:
        super().__init__(now=now, config=config or SessionConfig())
        self.handshake = ClientHandshake(
            identity,
            expected_node_key=expected_node_key,
            user=user,
            device=device,
            flags=HelloFlags.LOOKUP_ONLY if lookup_only else 0,
        )
        self._probes: dict[bytes, float] = {}
        self._probes_sent = 0

    def send_probe(self, now: float) -> bytes:
        """Queue a Probe (only before the handshake); the reply is a ``ProbeAnswered``."""
        if self.state is not ConnectionState.IDLE:
            raise InvalidState("probes are only allowed before start_handshake()")
        if self._probes_sent >= self.config.max_probes:
            raise InvalidState(f"at most {self.config.max_probes} probes per connection")
        nonce = os.urandom(NONCE_BYTES)
        self._probes[nonce] = now
        self._probes_sent += 1
        self._queue_plain(Probe(nonce, float(now)))
        return self.data_to_send()

    def start_handshake(self) -> bytes:
        """Queue the ClientHello; returns every byte due."""
        if self.state is not ConnectionState.IDLE:
            raise InvalidState(f"cannot start a handshake in state {self.state.value}")
        self._out += encode_frame(self.handshake.start(), self.config.max_frame_bytes)
        self.state = ConnectionState.HANDSHAKING
        return self.data_to_send()

    def _may_send(self) -> frozenset[type[Message]]:
        assert self.result is not None
        return LOOKUP_ONLY_SENDS if self.result.lookup_only else CLIENT_SENDS

    def _peer_may_send(self) -> frozenset[type[Message]]:
        return SERVER_SENDS

    def _on_plaintext(self, msg: Message, body: bytes, now: float, events: list[Event]) -> None:
        if isinstance(msg, ProbeReply):
            sent = self._probes.pop(msg.nonce, None)
            if sent is None:
                raise UnexpectedMessage("ProbeReply answers no Probe of ours")
            events.append(ProbeAnswered(msg, now - sent))
        elif isinstance(msg, Error):
            self._peer_closed(msg, False, events)
        elif isinstance(msg, ServerHello) and self.state is ConnectionState.HANDSHAKING:
            auth = self.handshake.receive(body)
            self._out += encode_frame(auth, self.config.max_frame_bytes)
            assert self.handshake.result is not None
            self._establish(self.handshake.result, now, events)
        else:
            raise UnexpectedMessage(
                f"unexpected {type(msg).__name__} from the supernode in state {self.state.value}"
            )

    def _received(self, msg: Message) -> None:
        if isinstance(msg, AttachOk):
            self.heartbeat_interval_s = float(msg.heartbeat_s)


class ServerConnection(Connection):
    """The supernode end of one client connection.

    ``accepting`` and ``load_permille`` are what ProbeReplies announce; set them as load
    changes. Admission control proper is ``send(Refused(...))`` after the handshake.
    """

    _peer_name = "client"

    def __init__(
        self,
        identity: Identity,
        *,
        now: float,
        config: SessionConfig | None = None,
        accepting: bool = True,
        load_permille: int = 0,
    ) -> None:
        super().__init__(now=now, config=config or SessionConfig())
        self.handshake = ServerHandshake(identity)
        self.accepting = accepting
        self.load_permille = load_permille
        self._probes_answered = 0

    @property
    def client_hello(self) -> ClientHello | None:
        """The client's hello, once received (before its identity is proven)."""
        return self.handshake.hello

    def _may_send(self) -> frozenset[type[Message]]:
        return SERVER_SENDS

    def _peer_may_send(self) -> frozenset[type[Message]]:
        assert self.result is not None
        return LOOKUP_ONLY_SENDS if self.result.lookup_only else CLIENT_SENDS

    def _on_plaintext(self, msg: Message, body: bytes, now: float, events: list[Event]) -> None:
        if isinstance(msg, Error):
            self._peer_closed(msg, False, events)
        elif isinstance(msg, Probe) and self.state is ConnectionState.IDLE:
            if self._probes_answered >= self.config.max_probes:
                raise UnexpectedMessage(f"more than {self.config.max_probes} probes")
            self._probes_answered += 1
            load = min(max(int(self.load_permille), 0), 1000)
            reply = ProbeReply(msg.nonce, msg.sent_at, PROTOCOL_VERSION, self.accepting, load)
            self._queue_plain(reply)
        elif isinstance(msg, ClientHello) and self.state is ConnectionState.IDLE:
            server_hello = self.handshake.receive(body)
            assert server_hello is not None
            self._out += encode_frame(server_hello, self.config.max_frame_bytes)
            self.state = ConnectionState.HANDSHAKING
        elif isinstance(msg, ClientAuth) and self.state is ConnectionState.HANDSHAKING:
            self.handshake.receive(body)
            assert self.handshake.result is not None
            self._establish(self.handshake.result, now, events)
        else:
            raise UnexpectedMessage(
                f"unexpected {type(msg).__name__} from the client in state {self.state.value}"
            )

    def _sent(self, msg: Message) -> None:
        if isinstance(msg, AttachOk):
            self.heartbeat_interval_s = float(msg.heartbeat_s)

"""What a sans-IO attachment session reports: the events ``receive_data`` and
``handle_timer`` return (see :mod:`overlay.attach.connection`)."""

from __future__ import annotations

from dataclasses import dataclass

from overlay.attach.errors import ProtocolError
from overlay.attach.handshake import HandshakeResult
from overlay.attach.messages import Error, Goodbye, Message, ProbeReply


@dataclass(frozen=True)
class HandshakeComplete:
    """The channel is up. On the client this means the supernode is authenticated and our
    ClientAuth is queued; if the supernode rejects our proof, a ``PeerClosed`` with an
    unauthenticated ``Error`` follows.
    """

    result: HandshakeResult


@dataclass(frozen=True)
class MessageReceived:
    """An authenticated application message (never Ping/Pong/Goodbye/Error)."""

    message: Message


@dataclass(frozen=True)
class ProbeAnswered:
    """Client: a ProbeReply arrived; ``rtt_s`` is measured with the caller's clock."""

    reply: ProbeReply
    rtt_s: float


@dataclass(frozen=True)
class HeartbeatDue:
    """Nothing heard for ``missed`` intervals; a Ping has been queued (send it)."""

    missed: int


@dataclass(frozen=True)
class PongReceived:
    seq: int
    rtt_s: float


@dataclass(frozen=True)
class PeerDead:
    """Nothing heard for ``missed`` heartbeat intervals; the session is closed."""

    silent_s: float
    missed: int


@dataclass(frozen=True)
class PeerClosed:
    """The peer sent Goodbye or Error; the session is closed.

    ``authenticated`` is False for a plaintext Error before (or instead of) the channel.
    """

    message: Goodbye | Error
    authenticated: bool


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer broke the protocol (or timed out); an Error is queued and the session closed."""

    reason: str
    error: ProtocolError


Event = (
    HandshakeComplete
    | MessageReceived
    | ProbeAnswered
    | HeartbeatDue
    | PongReceived
    | PeerDead
    | PeerClosed
    | ProtocolViolation
)

"""UDP hole punching on the client's media socket (sans-IO :class:`Puncher` + asyncio).

One :class:`MediaSocket` per client: a single UDP socket that asks supernodes for its reflexive
address (:mod:`overlay.media.binding`), punches holes, and then carries QUIC
(:mod:`overlay.media.quic_path`). It demultiplexes every datagram it receives:

- ``OVL1`` (DHT envelope): RESPONSE envelopes whose msg_id a binding request is waiting for;
- ``OVLP`` (punch probe, below): to the punching session named in the probe;
- anything else: QUIC, routed by destination connection id (then by source address); a QUIC
  Initial from an address a waiting responder accepts creates its connection. QUIC packets
  that arrive before anyone claims them are kept for a moment (a peer may finish punching
  first and start QUIC at once).

Probe format (46 bytes)::

    "OVLP" | type(1: 1 probe, 2 ack) | role(1: 0 initiator, 1 responder) | session_id(16)
           | txid(8) | tag(16)

``tag`` is BLAKE2b-128 keyed by the session's punch key (:func:`punch_key`, derived from the
X25519 secret and transcript of the signed invite/answer) over everything before it. Strangers
cannot forge probes; a probe reflected back at its sender is refused (wrong role); an ack is
taken only if it echoes the txid of a probe we sent.

Punching (ICE-like, one component): both sides send probes to every remote candidate (host and
server-reflexive) every 100 ms for the first second, then every 200 ms, until ``timeout``.
Each side answers every valid probe with an ack to the probe's source. A valid probe from an
address the peer did not announce teaches us its peer-reflexive address (what its NAT really
maps it to); we probe it from then on and prefer it. Success = the first valid probe or ack;
its source address is the peer's address for QUIC.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aioquic._buffer import Buffer
from aioquic.quic.packet import QuicHeader, QuicPacketType, pull_quic_header

from overlay.dht.envelope import MAGIC as ENVELOPE_MAGIC
from overlay.dht.envelope import MSG_ID_BYTES, Envelope, EnvelopeError, Kind, open_datagram

Address = tuple[str, int]

PROBE_MAGIC = b"OVLP"
PROBE = 1
ACK = 2
SESSION_ID_BYTES = 16
TXID_BYTES = 8
TAG_BYTES = 16
PROBE_HEAD_BYTES = len(PROBE_MAGIC) + 2 + SESSION_ID_BYTES + TXID_BYTES
PROBE_BYTES = PROBE_HEAD_BYTES + TAG_BYTES
PROBE_PERSON = b"ovl-punch-v1"
KEY_PERSON = b"ovl-punch-key-v1"

#: probe rounds: every FAST interval during the first FAST_PERIOD, then every SLOW interval
FAST_INTERVAL_S = 0.1
FAST_PERIOD_S = 1.0
SLOW_INTERVAL_S = 0.2
DEFAULT_TIMEOUT_S = 5.0
#: after punching, keep answering the peer's probes this long (its acks may have been lost)
LINGER_S = 15.0
#: peer-reflexive addresses learned per session, at most
MAX_LEARNED = 8
MAX_TARGETS = 24
#: QUIC datagrams nobody claimed yet: kept this long, this many
EARLY_KEEP_S = 3.0
EARLY_MAX = 32
#: our QUIC connection ids are this long (short headers do not carry a length)
QUIC_CID_BYTES = 8


class PunchFailed(Exception):
    """No valid probe or ack from the peer within the time allowed."""


def punch_key(shared_secret: bytes, transcript_hash: bytes) -> bytes:
    """The session's probe key: both sides compute it from the invite/answer agreement."""
    return hashlib.blake2b(transcript_hash, key=shared_secret, digest_size=32,
                           person=KEY_PERSON).digest()


def _tag(key: bytes, head: bytes) -> bytes:
    return hashlib.blake2b(head, key=key, digest_size=TAG_BYTES, person=PROBE_PERSON).digest()


def encode_probe(key: bytes, kind: int, role: int, session_id: bytes, txid: bytes) -> bytes:
    head = PROBE_MAGIC + bytes([kind, role]) + session_id + txid
    return head + _tag(key, head)


@dataclass(frozen=True)
class Probe:
    kind: int
    role: int
    session_id: bytes
    txid: bytes


def decode_probe(key: bytes, data: bytes) -> Probe | None:
    """The probe in ``data`` if its tag verifies under ``key``, else None."""
    if len(data) != PROBE_BYTES or data[:4] != PROBE_MAGIC:
        return None
    head, tag = data[:PROBE_HEAD_BYTES], data[PROBE_HEAD_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, head)):
        return None
    kind, role = data[4], data[5]
    if kind not in (PROBE, ACK) or role not in (0, 1):
        return None
    return Probe(kind, role, data[6:6 + SESSION_ID_BYTES], data[6 + SESSION_ID_BYTES:
                                                                PROBE_HEAD_BYTES])


def probe_session_id(data: bytes) -> bytes | None:
    """The session id a probe names (unauthenticated: for routing only)."""
    if len(data) != PROBE_BYTES or data[:4] != PROBE_MAGIC:
        return None
    return data[6:6 + SESSION_ID_BYTES]


def punch_feasible(local_nat: str, remote_nat: str) -> bool:
    """Whether punching is worth trying between these NAT types (``binding.classify``).

    No UDP on either side never works; two symmetric NATs never do; symmetric against a cone
    works only with a full- or address-restricted cone, which the types do not tell apart, so
    that is tried (it fails within the punch timeout against a port-restricted cone)."""
    if "no-udp" in (local_nat, remote_nat):
        return False
    return not (local_nat == "symmetric" and remote_nat == "symmetric")


Datagram = tuple[bytes, Address]


class Puncher:
    """The punching state of one session on one side (sans-IO).

    ``poll(now)`` returns the probes due; ``receive(data, addr, now)`` takes a probe datagram
    and returns what to answer; ``next_deadline()`` says when to poll again. ``state`` is
    ``"punching"``, ``"succeeded"`` (``selected`` is the peer's address) or ``"failed"``.
    After success the puncher stops probing but keeps answering probes.
    """

    def __init__(
        self, session_id: bytes, key: bytes, local_candidates: Sequence[Address],
        remote_candidates: Sequence[Address], *, initiator: bool, now: float,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if len(session_id) != SESSION_ID_BYTES:
            raise ValueError(f"a session id is {SESSION_ID_BYTES} bytes")
        if len(key) < 16:
            raise ValueError("the punch key is at least 16 bytes")
        self.session_id = session_id
        self.key = key
        self.role = 0 if initiator else 1
        self.local = [tuple(a) for a in local_candidates]
        self.started = now
        self.deadline = now + timeout
        own = set(self.local)
        self.targets: list[Address] = []
        for host, port in remote_candidates:
            addr = (host, port)
            if 0 < port < 65536 and addr not in own and addr not in self.targets:
                self.targets.append(addr)
        self.targets = self.targets[:MAX_TARGETS]
        #: addresses the peer did not announce but sent valid probes from
        self.learned: list[Address] = []
        #: address -> "ack" or "probe": what valid traffic came from it
        self.verified: dict[Address, str] = {}
        self.selected: Address | None = None
        self.state = "punching" if self.targets else "failed"
        self.succeeded_at: float | None = None
        self.rtt: float | None = None
        self._sent: dict[bytes, tuple[Address, float]] = {}
        self._next_round = now
        self.probes_sent = 0
        self.rejected: Counter[str] = Counter()

    # -- sending ---------------------------------------------------------------------------

    def _probe(self, addr: Address, now: float) -> Datagram:
        txid = os.urandom(TXID_BYTES)
        self._sent[txid] = (addr, now)
        self.probes_sent += 1
        return encode_probe(self.key, PROBE, self.role, self.session_id, txid), addr

    def poll(self, now: float) -> list[Datagram]:
        if self.state == "punching" and now >= self.deadline:
            self.state = "failed"
        if self.state != "punching" or now < self._next_round:
            return []
        fast = now - self.started < FAST_PERIOD_S
        self._next_round = now + (FAST_INTERVAL_S if fast else SLOW_INTERVAL_S)
        # learned (peer-reflexive) addresses first: they are what the peer's NAT really uses
        return [self._probe(a, now) for a in [*self.learned, *self.targets]]

    def next_deadline(self) -> float | None:
        if self.state != "punching":
            return None
        return min(self._next_round, self.deadline)

    # -- receiving -------------------------------------------------------------------------

    def _verified(self, addr: Address, how: str, now: float) -> None:
        if self.verified.get(addr) != "ack":
            self.verified[addr] = how
        if self.state == "punching":
            self.state = "succeeded"
            self.selected = addr
            self.succeeded_at = now

    def receive(self, data: bytes, addr: Address, now: float) -> list[Datagram]:
        probe = decode_probe(self.key, data)
        if probe is None or probe.session_id != self.session_id:
            self.rejected["bad_tag"] += 1
            return []
        if probe.role == self.role:
            self.rejected["reflected"] += 1
            return []
        if self.state == "failed":
            self.rejected["after_failure"] += 1
            return []
        addr = (addr[0], addr[1])
        if probe.kind == PROBE:
            if addr not in self.targets and addr not in self.learned \
                    and len(self.learned) < MAX_LEARNED:
                self.learned.append(addr)  # peer-reflexive
            self._verified(addr, "probe", now)
            ack = encode_probe(self.key, ACK, self.role, self.session_id, probe.txid)
            return [(ack, addr)]
        sent = self._sent.get(probe.txid)
        if sent is None:
            self.rejected["unknown_txid"] += 1
            return []
        if self.rtt is None:
            self.rtt = now - sent[1]
        self._verified(addr, "ack", now)
        return []


# -- the socket ------------------------------------------------------------------------------


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

    @classmethod
    async def open(cls, host: str = "0.0.0.0", port: int = 0) -> MediaSocket:
        loop = asyncio.get_running_loop()
        sock = cls()
        await loop.create_datagram_endpoint(lambda: sock, local_addr=(host, port))
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
        replies = session.puncher.receive(data, addr, time.monotonic())
        for reply, to in replies:
            self.sendto(reply, to)
        session.changed.set()
        return True

    def _quic(self, data: bytes, addr: Address) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=QUIC_CID_BYTES)
        except ValueError:
            self.stats["foreign"] += 1
            return
        receiver = self._quic_by_cid.get(header.destination_cid) or self._quic_by_addr.get(addr)
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


# -- asyncio punching ------------------------------------------------------------------------


async def punch(
    media: MediaSocket, session_id: bytes, key: bytes, initiator: bool,
    local_candidates: Sequence[Address], remote_candidates: Sequence[Address],
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Address:
    """Punch a hole to the peer; its address (as our socket sees it) or :class:`PunchFailed`
    within ``timeout``.

    ``key`` is :func:`punch_key` of the session; ``initiator`` is True on the invite's sender
    and False on the other side (they must differ). The session keeps answering the peer's
    probes for ``LINGER_S`` afterwards, and the addresses it verified stay available to
    :func:`overlay.media.quic_path.quic_connect` through ``media.puncher(session_id)``."""
    loop = asyncio.get_running_loop()
    puncher = Puncher(session_id, key, local_candidates, remote_candidates,
                      initiator=initiator, now=time.monotonic(), timeout=timeout)
    changed = media.add_puncher(puncher)
    try:
        while True:
            now = time.monotonic()
            for data, addr in puncher.poll(now):
                media.sendto(data, addr)
            if puncher.state == "succeeded":
                assert puncher.selected is not None
                media.remove_puncher(session_id, after=LINGER_S)
                return puncher.selected
            if puncher.state == "failed":
                break
            deadline = puncher.next_deadline()
            changed.clear()
            timer = loop.call_later(max(0.0, (deadline or now) - now), changed.set)
            try:
                await changed.wait()
            finally:
                timer.cancel()
    except BaseException:
        media.remove_puncher(session_id)
        raise
    media.remove_puncher(session_id)
    elapsed = time.monotonic() - puncher.started
    tried = ", ".join(f"{h}:{p}" for h, p in puncher.targets) or "no candidates"
    raise PunchFailed(f"no answer from the peer in {elapsed:.1f}s "
                      f"({puncher.probes_sent} probes to {tried})")

"""UDP hole punching, sans-IO: the probe format and :class:`Puncher`, one session's punching
on one side. :func:`overlay.media.punch_io.punch` drives it on the client's
:class:`~overlay.media.media_socket.MediaSocket`.

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

import hashlib
import hmac
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from overlay.core.addresses import Address
from overlay.media.errors import PathLost

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


class PunchFailed(PathLost):
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


def punch_feasible(local_nat: str, remote_nat: str, mapped: bool = False) -> bool:
    """Whether punching is worth trying between these NAT types (``binding.classify``);
    ``mapped``: a side holds a router mapping of its UDP socket (PCP/NAT-PMP/UPnP).

    No UDP on either side never works; two symmetric NATs never do, unless a side's socket
    is mapped: its mapped port takes datagrams from anywhere, so the other side's probes to
    it get through whatever port its own NAT picks, and the mapped side acks to the source
    it saw (simple punching; a symmetric NAT's router with a mapping is the lab's
    ``mapping`` kind). Symmetric against a cone or public side is tried with birthday
    punching (:mod:`overlay.media.birthday`), which also does the simple probing that
    suffices against a full- or address-restricted cone."""
    if "no-udp" in (local_nat, remote_nat):
        return False
    return mapped or not (local_nat == "symmetric" and remote_nat == "symmetric")


Datagram = tuple[bytes, Address]



class Puncher:
    """The punching state of one session on one side (sans-IO, aioquic's vocabulary).

    :meth:`datagrams_to_send` returns what is due (a round of probes, the acks owed);
    :meth:`receive_datagram` takes a probe datagram; :meth:`get_timer` says when
    :meth:`handle_timer` is next due (the next probe round, or the deadline). ``state`` is
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
        #: acks owed for the probes received, until :meth:`datagrams_to_send` takes them
        self._replies: list[Datagram] = []
        self.probes_sent = 0
        self.rejected: Counter[str] = Counter()

    # -- timer -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.state != "punching":
            return None
        return min(self._next_round, self.deadline)

    def handle_timer(self, now: float) -> None:
        """Past the deadline without an answer, punching has failed."""
        if self.state == "punching" and now >= self.deadline:
            self.state = "failed"

    # -- sending ---------------------------------------------------------------------------

    def _probe(self, addr: Address, now: float) -> Datagram:
        txid = os.urandom(TXID_BYTES)
        self._sent[txid] = (addr, now)
        self.probes_sent += 1
        return encode_probe(self.key, PROBE, self.role, self.session_id, txid), addr

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._replies = self._replies, []
        if self.state != "punching" or now >= self.deadline or now < self._next_round:
            return out
        fast = now - self.started < FAST_PERIOD_S
        self._next_round = now + (FAST_INTERVAL_S if fast else SLOW_INTERVAL_S)
        # learned (peer-reflexive) addresses first: they are what the peer's NAT really uses
        return out + [self._probe(a, now) for a in [*self.learned, *self.targets]]

    # -- receiving -------------------------------------------------------------------------

    def _verified(self, addr: Address, how: str, now: float) -> None:
        if self.verified.get(addr) != "ack":
            self.verified[addr] = how
        if self.state == "punching":
            self.state = "succeeded"
            self.selected = addr
            self.succeeded_at = now

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        probe = decode_probe(self.key, data)
        if probe is None or probe.session_id != self.session_id:
            self.rejected["bad_tag"] += 1
            return
        if probe.role == self.role:
            self.rejected["reflected"] += 1
            return
        if self.state == "failed":
            self.rejected["after_failure"] += 1
            return
        addr = (addr[0], addr[1])
        if probe.kind == PROBE:
            if addr not in self.targets and addr not in self.learned \
                    and len(self.learned) < MAX_LEARNED:
                self.learned.append(addr)  # peer-reflexive
            self._verified(addr, "probe", now)
            ack = encode_probe(self.key, ACK, self.role, self.session_id, probe.txid)
            self._replies.append((ack, addr))
            return
        sent = self._sent.get(probe.txid)
        if sent is None:
            self.rejected["unknown_txid"] += 1
            return
        if self.rtt is None:
            self.rtt = now - sent[1]
        self._verified(addr, "ack", now)

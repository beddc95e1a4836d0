"""Per-peer DHT session keys (sans-IO): a MAC per datagram after one signed exchange.

Every node holds one X25519 *ephemeral* key pair, replaced every :data:`ROTATE_S` (the
previous one is still accepted for one more period, then forgotten). Its public half rides,
under the signature, in every signed datagram the node sends (:mod:`overlay.dht.envelope`),
so a peer learns it *authenticated* by the node's ed25519 key. Two nodes that each hold the
other's authenticated ephemeral share a session key::

    K = BLAKE2b-256(X25519(own ephemeral, peer ephemeral),
                    person "ovl-dht-sess-v3",
                    data = E1 | S1 | E2 | S2)

with (E, S) each side's ephemeral and static ed25519 key, the side with the smaller
ephemeral first (both compute the same bytes). Binding the static keys means a node that
copies someone else's ephemeral into its own signed datagram gets a session with nobody.
Who knows neither ephemeral secret cannot compute K, the thief of a node's long-term key
included (no key-compromise impersonation: the ephemerals are signed, not derived from it).

A node sends a peer session datagrams (MAC instead of signature) only once the peer holds
the node's current ephemeral: it answered a signed request that carried it, it sent a
session datagram under it, or the node answered its signed request with a signed response
carrying it (the first exchange; should that response be lost, see below). A response takes
the form of its request (a session request is answered under the same key). State is
bounded: at most :data:`MAX_PEERS` peers (least recently used forgotten first), at most two
ephemerals per peer, the derived keys of those only. A node that lost its state (restart,
eviction) has no session: its peer's session datagrams are dropped unanswered
(``no_session``), the peer's retransmission goes signed
(:meth:`SessionTable.unacknowledge`), and the signed exchange sets the session up again; a
signed datagram with a new ephemeral from a peer also resets what that peer was proven to
hold.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

from overlay.dht.envelope import (
    EPH_ID_BYTES,
    EPHEMERAL_BYTES,
    NO_EPHEMERAL,
    SESSION_KEY_BYTES,
    SessionIds,
)

ROTATE_S = 600.0
MAX_PEERS = 4096
KDF_PERSON = b"ovl-dht-sess-v3"
EPH_ID_PERSON = b"ovl-dht-eph-v3"
#: ephemerals remembered per peer (its latest and the one before, for datagrams in flight)
PEER_EPHEMERALS = 2


def ephemeral_id(public: bytes) -> bytes:
    """The 8-byte name of an ephemeral public key in session datagrams."""
    return hashlib.blake2b(public, digest_size=EPH_ID_BYTES, person=EPH_ID_PERSON).digest()


def session_key(own_secret: bytes, own_public: bytes, own_static: bytes,
                peer_public: bytes, peer_static: bytes) -> bytes | None:
    """K for this pair of ephemerals (module docstring); None for a peer ephemeral that
    gives no secret (a low-order point)."""
    try:
        shared = crypto_scalarmult(own_secret, peer_public)
    except CryptoError:
        return None
    if shared == NO_EPHEMERAL:
        return None
    first, second = sorted([(own_public, own_static), (peer_public, peer_static)])
    return hashlib.blake2b(shared + first[0] + first[1] + second[0] + second[1],
                           digest_size=SESSION_KEY_BYTES, person=KDF_PERSON).digest()


@dataclass(frozen=True, slots=True)
class Ephemeral:
    secret: bytes
    public: bytes
    id: bytes

    @classmethod
    def generate(cls) -> Ephemeral:
        secret = os.urandom(32)
        public = crypto_scalarmult_base(secret)
        return cls(secret, public, ephemeral_id(public))


@dataclass
class PeerSession:
    static_key: bytes
    #: the peer's authenticated ephemerals by id, oldest first
    ephemerals: OrderedDict[bytes, bytes] = field(default_factory=OrderedDict)
    #: the id of our ephemeral the peer has proven to hold
    acknowledged: bytes | None = None
    #: derived keys by (our ephemeral id, its ephemeral id)
    keys: dict[tuple[bytes, bytes], bytes | None] = field(default_factory=dict)

    @property
    def latest(self) -> bytes:
        return next(reversed(self.ephemerals))


@dataclass
class SessionStats:
    derived: int = 0
    evicted_peers: int = 0
    rotations: int = 0


class SessionTable:
    """Our ephemerals and, per peer node id, what the session with it needs."""

    def __init__(self, own_id: bytes, own_static: bytes, now: float,
                 rotate_s: float = ROTATE_S, max_peers: int = MAX_PEERS) -> None:
        self.own_id = own_id
        self.own_static = own_static
        self.rotate_s = rotate_s
        self.max_peers = max_peers
        self.stats = SessionStats()
        self._current = Ephemeral.generate()
        self._previous: Ephemeral | None = None
        self._rotated_at = now
        self._peers: OrderedDict[bytes, PeerSession] = OrderedDict()

    # -- our ephemerals --------------------------------------------------------------------

    def _rotate(self, now: float) -> None:
        age = now - self._rotated_at
        if age < self.rotate_s:
            return
        self._previous = self._current if age < 2 * self.rotate_s else None
        self._current = Ephemeral.generate()
        self._rotated_at = now
        self.stats.rotations += 1

    def offer(self, now: float) -> bytes:
        """The ephemeral public key our signed datagrams carry now."""
        self._rotate(now)
        return self._current.public

    def _own(self, eph_id: bytes) -> Ephemeral | None:
        if eph_id == self._current.id:
            return self._current
        if self._previous is not None and eph_id == self._previous.id:
            return self._previous
        return None

    # -- what peers showed us --------------------------------------------------------------

    def learn(self, peer_id: bytes, peer_static: bytes, ephemeral: bytes) -> None:
        """``ephemeral`` came in a signed datagram from ``peer_static`` (whose node id is
        ``peer_id``), after its checks (fresh, for us)."""
        if ephemeral == NO_EPHEMERAL or len(ephemeral) != EPHEMERAL_BYTES \
                or peer_id == self.own_id:
            return
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = PeerSession(peer_static)
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
                self.stats.evicted_peers += 1
        else:
            self._peers.move_to_end(peer_id)
        eph_id = ephemeral_id(ephemeral)
        if eph_id in peer.ephemerals:  # known (a late datagram must not turn it back)
            return
        peer.ephemerals[eph_id] = ephemeral
        while len(peer.ephemerals) > PEER_EPHEMERALS:
            peer.ephemerals.popitem(last=False)
        # a new ephemeral: the peer rotated or restarted, and may have lost ours
        peer.acknowledged = None
        peer.keys = {k: v for k, v in peer.keys.items() if k[1] in peer.ephemerals}

    def acknowledge(self, peer_id: bytes, own_eph_id: bytes) -> None:
        """The peer proved it holds our ephemeral ``own_eph_id``."""
        peer = self._peers.get(peer_id)
        if peer is not None and self._own(own_eph_id) is not None:
            peer.acknowledged = own_eph_id

    def answered(self, peer_id: bytes, now: float) -> None:
        """We answered the peer's signed request (which carried its ephemeral) with a signed
        response carrying our current one: the peer holds ours once that response arrives.
        Should it be lost, our next session datagram is dropped there unanswered and its
        retransmission goes signed (:meth:`unacknowledge`)."""
        self._rotate(now)
        self.acknowledge(peer_id, self._current.id)

    def unacknowledge(self, peer_id: bytes) -> None:
        """The peer may have lost our ephemeral (a request went unanswered): sign again
        until it proves it holds one."""
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.acknowledged = None

    def forget(self, peer_id: bytes) -> None:
        self._peers.pop(peer_id, None)

    # -- keys --------------------------------------------------------------------------------

    def _key(self, peer: PeerSession, own: Ephemeral, peer_eph_id: bytes) -> bytes | None:
        pair = (own.id, peer_eph_id)
        if pair in peer.keys:
            return peer.keys[pair]
        public = peer.ephemerals.get(peer_eph_id)
        if public is None:
            return None
        key = session_key(own.secret, own.public, self.own_static, public, peer.static_key)
        self.stats.derived += 1
        # keep only the keys of ephemerals both sides still hold
        peer.keys = {k: v for k, v in peer.keys.items() if self._own(k[0]) is not None}
        peer.keys[pair] = key
        return key

    def sending(self, peer_id: bytes, now: float) -> tuple[bytes, SessionIds] | None:
        """The key and ids for a session datagram to ``peer_id``, or None: sign instead."""
        self._rotate(now)
        peer = self._peers.get(peer_id)
        if peer is None or peer.acknowledged != self._current.id:
            return None
        self._peers.move_to_end(peer_id)
        latest = peer.latest
        key = self._key(peer, self._current, latest)
        return None if key is None else (key, SessionIds(self._current.id, latest))

    def receiving(self, peer_id: bytes, ids: SessionIds, now: float) -> bytes | None:
        """The key a session datagram from ``peer_id`` naming ``ids`` is checked with, or
        None (no such session here: the datagram is dropped)."""
        self._rotate(now)
        peer = self._peers.get(peer_id)
        own = self._own(ids.recipient_eph_id)
        if peer is None or own is None:
            return None
        self._peers.move_to_end(peer_id)
        return self._key(peer, own, ids.sender_eph_id)

    def reply(self, peer_id: bytes, received: SessionIds, now: float
              ) -> tuple[bytes, SessionIds] | None:
        """The key and ids to answer a session request that named ``received``."""
        key = self.receiving(peer_id, received, now)
        if key is None:
            return None
        return key, SessionIds(received.recipient_eph_id, received.sender_eph_id)

    def holds_ours(self, peer_id: bytes) -> bool:
        """Whether our datagrams to ``peer_id`` go under a session (it holds our current
        ephemeral), without deriving the key."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.acknowledged == self._current.id

    def established(self, peer_id: bytes, now: float) -> bool:
        return self.sending(peer_id, now) is not None

    def __len__(self) -> int:
        return len(self._peers)

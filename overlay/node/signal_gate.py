"""Which signals a supernode delivers to its clients (sans-IO: time and lookups passed in).

A signal forwarded by another supernode (DHT method ``signal``) is delivered only when, in
this order:

1. its sender (the DHT envelope's key) is the ``node_key`` of a live supernode record in the
   directory (``not_supernode``), within that supernode's rate (``rate_forwarder``);
2. its payload is an offer (invite or answer) signed by ``from_key``
   (:func:`overlay.core.offers.signed_by`; ``bad_invite``);
3. ``from_key`` is the key that owns ``from_user``
   (:func:`overlay.dht.names.name_owner`; ``not_owner``);
4. the caller key and the target user are within their rates (``rate_caller``,
   ``rate_target``).

A signal between two clients of this supernode skips step 1. What the gate does not know
yet (the directory, a name's owner) it answers ``checking``: the adapter looks it up (what
:meth:`SignalGate.directory_due` and :meth:`SignalGate.owners_due` hand out), feeds the
answer back and checks the signal again (:mod:`overlay.node.held_signals`); the sender asks
again meanwhile. Directory refreshes are rate-limited and owner lookups
capped, so a stranger's datagrams never make the supernode crawl the DHT per datagram.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from overlay.core.offers import signed_by
from overlay.core.records import Record, SupernodeRecord
from overlay.node.forwarded_signal import ForwardedSignal
from overlay.node.signal_limits import SignalLimiter
from overlay.node.supernode_options import SignalLimits


class Refusal(StrEnum):
    """Why a signal was not delivered: the ``reason`` of the DHT reply and the metric label."""

    #: the arguments do not fit the schema (answered ``{"error": ...}``)
    MALFORMED = "malformed"
    #: the DHT envelope's key is not a live supernode in the directory
    NOT_SUPERNODE = "not_supernode"
    #: that supernode sent more than its rate
    RATE_FORWARDER = "rate_forwarder"
    #: the payload is not an offer signed by ``from_key``
    BAD_INVITE = "bad_invite"
    #: ``from_key`` is not the key that owns ``from_user`` (or nobody does, or in conflict)
    NOT_OWNER = "not_owner"
    #: the caller key sent more than its rate
    RATE_CALLER = "rate_caller"
    #: the target user was sent more than its rate
    RATE_TARGET = "rate_target"
    #: the target device is not attached here
    NOT_ATTACHED = "not_attached"
    #: not decided yet (the directory or the name's owner is being looked up): ask again
    CHECKING = "checking"


@dataclass
class SignalStats:
    """What ``/metrics`` shows about signals."""

    refused: Counter[str] = field(default_factory=Counter)
    #: signals answered ``checking`` (not decided yet: the sender asks again), not refusals
    deferred: int = 0
    #: signals that passed every check and were handed to a client attached here
    delivered: int = 0
    #: signals of this supernode's clients that the receiver's supernode accepted
    forwarded: int = 0


#: forwarders remembered for the next directory read, and supernodes known at most
MAX_WANTED_SUPERNODES = 64
MAX_KNOWN_SUPERNODES = 16_384


class SignalGate:
    """The checks and limits, with the directory and name owners they remember."""

    def __init__(self, limits: SignalLimits) -> None:
        self.limits = limits
        self.limiter = SignalLimiter(limits)
        self.stats = SignalStats()
        #: node_key -> its record's expires_at, as last read from the directory
        self._directory: dict[bytes, float] = {}
        self._directory_read_at = float("-inf")
        self._directory_asked_at = float("-inf")
        self._directory_in_flight = False
        self._directory_due = False
        #: forwarders missing from what was read: the next read includes their shards
        self._directory_wanted: set[bytes] = set()
        #: the forwarders the last read looked for (their shards): a miss of another one
        #: within ``directory_refresh_min_s`` waits for the next read instead of a refusal
        self._directory_covered: set[bytes] = set()
        #: how long the adapter waits before the read it is handed (0: at once)
        self._directory_delay = 0.0
        #: name -> (owner key or None, remembered until)
        self._owners: OrderedDict[str, tuple[bytes | None, float]] = OrderedDict()
        self._owners_in_flight: set[str] = set()
        self._owners_due: list[str] = []

    # -- the checks -------------------------------------------------------------------------

    def check(self, signal: ForwardedSignal, now: float,
              forwarder: bytes | None) -> Refusal | None:
        """None when ``signal`` may be delivered, else why not (counted). ``forwarder`` is the
        DHT envelope's key, or None for a signal from a client attached here."""
        reason = self._check(signal, now, forwarder)
        if reason is not None:
            self.refuse(reason)
        return reason

    def refuse(self, reason: Refusal) -> None:
        if reason is Refusal.CHECKING:
            self.stats.deferred += 1
        else:
            self.stats.refused[reason.value] += 1

    def _check(self, signal: ForwardedSignal, now: float,
               forwarder: bytes | None) -> Refusal | None:
        if forwarder is not None:
            unknown = self._known_supernode(forwarder, now)
            if unknown is not None:
                return unknown
            if not self.limiter.supernodes.allow(forwarder, now):
                return Refusal.RATE_FORWARDER
        if not signed_by(signal.payload, signal.from_key):
            return Refusal.BAD_INVITE
        not_owner = self._owned_by(signal.from_user, signal.from_key, now)
        if not_owner is not None:
            return not_owner
        if not self.limiter.callers.allow(signal.from_key, now):
            return Refusal.RATE_CALLER
        if not self.limiter.targets.allow(signal.to_user, now):
            return Refusal.RATE_TARGET
        return None

    def _known_supernode(self, key: bytes, now: float) -> Refusal | None:
        expires_at = self._directory.get(key)
        stale = now - self._directory_read_at >= self.limits.directory_ttl_s
        if expires_at is not None and expires_at > now:
            if stale:
                self._want_directory(now)  # read it again, meanwhile trust what we have
            return None
        if len(self._directory_wanted) < MAX_WANTED_SUPERNODES:
            self._directory_wanted.add(key)
        if self._want_directory(now):
            return Refusal.CHECKING
        if key not in self._directory_covered:
            # the last read did not look for it (a periodic read, or one for other
            # forwarders): read again when the window allows, still one per window
            self._defer_directory(now)
            return Refusal.CHECKING
        return Refusal.NOT_SUPERNODE

    def _want_directory(self, now: float) -> bool:
        """Whether a directory read is under way or starts now (at most one per
        ``directory_refresh_min_s``)."""
        if self._directory_in_flight:
            return True
        if now - self._directory_asked_at < self.limits.directory_refresh_min_s:
            return False
        self._directory_asked_at = now
        self._directory_in_flight = self._directory_due = True
        self._directory_delay = 0.0
        return True

    def _defer_directory(self, now: float) -> None:
        """A read at the end of the current window (``directory_refresh_min_s`` after the
        last one), unless one is already set for then."""
        if self._directory_asked_at > now:
            return
        at = self._directory_asked_at + self.limits.directory_refresh_min_s
        self._directory_delay = max(0.0, at - now)
        self._directory_asked_at = at
        self._directory_in_flight = self._directory_due = True

    def _owned_by(self, name: str, key: bytes, now: float) -> Refusal | None:
        known = self._owners.get(name)
        if known is not None and known[1] > now:
            self._owners.move_to_end(name)
            return None if known[0] == key else Refusal.NOT_OWNER
        if (name not in self._owners_in_flight
                and len(self._owners_in_flight) < self.limits.max_owner_lookups):
            self._owners_in_flight.add(name)
            self._owners_due.append(name)
        return Refusal.CHECKING

    # -- lookups: handed out, answered by the adapter ----------------------------------------

    def directory_due(self) -> bool:
        """Whether the adapter should read the directory now (then :meth:`learn_directory`
        or :meth:`directory_failed`)."""
        due, self._directory_due = self._directory_due, False
        return due

    def directory_delay(self) -> float:
        """How long the adapter waits before the read :meth:`directory_due` handed out (a
        deferred read keeps to one per ``directory_refresh_min_s``)."""
        return self._directory_delay

    def owners_due(self) -> list[str]:
        """Names whose owner the adapter should look up now (then :meth:`learn_owner` or
        :meth:`owner_failed` for each)."""
        due, self._owners_due = self._owners_due, []
        return due

    def directory_wanted(self) -> list[bytes]:
        """The supernodes the next directory read must cover (their shards are read)."""
        return list(self._directory_wanted)

    def learn_directory(self, found: Iterable[Record], now: float) -> None:
        """The directory's records (verified by the DHT layer), added to those still live
        (the directory is sharded: one read covers a few shards); at most
        ``MAX_KNOWN_SUPERNODES``, those expiring first forgotten first."""
        found_list = list(found)
        known = {k: t for k, t in self._directory.items() if t > now}
        known.update((r.node_key, r.expires_at) for r in found_list
                     if isinstance(r, SupernodeRecord) and r.expires_at > now)
        if len(known) > MAX_KNOWN_SUPERNODES:
            keep = sorted(known, key=known.__getitem__)[-MAX_KNOWN_SUPERNODES:]
            known = {k: known[k] for k in keep}
        self._directory = known
        self._directory_covered = self._directory_wanted | {
            r.node_key for r in found_list if isinstance(r, SupernodeRecord)}
        self._directory_wanted.clear()
        self._directory_read_at = now
        # the next read on a miss waits directory_refresh_min_s from this one
        self._directory_asked_at = max(self._directory_asked_at, now)
        self._directory_in_flight = False

    def directory_failed(self) -> None:
        self._directory_in_flight = False

    def owner_known(self, name: str, now: float) -> bool:
        """Whether ``name``'s owner is remembered (no lookup needed)."""
        known = self._owners.get(name)
        return known is not None and known[1] > now

    def learn_owner(self, name: str, key: bytes | None, now: float) -> None:
        """``name`` is owned by ``key`` (None: by nobody, or in conflict)."""
        self._owners_in_flight.discard(name)
        ttl = self.limits.owner_ttl_s if key is not None else self.limits.unowned_ttl_s
        self._owners.pop(name, None)
        self._owners[name] = (key, now + ttl)
        while len(self._owners) > self.limits.max_owners_cached:
            self._owners.popitem(last=False)

    def owner_failed(self, name: str) -> None:
        self._owners_in_flight.discard(name)

"""The supernode directory at one holder (sans-IO; kept by ``dht/storage``, its dial-backs run
by ``node/directory_checks``).

The directory is sharded (:mod:`overlay.core.directory_keys`): a holder keeps the records of
every shard key it is close to. The caps below (listed, waiting, per network) hold **per
key**; dial-back budgets are the holder's, shared by its keys.

A supernode record says "key K is at HOST:PORT"; its signature proves only that K signed it.
Anyone can sign such records with throwaway keys, so a holder *lists* a record -- serves it in
``find_value`` answers for the directory key, and so to clients -- only once it has dialled
HOST:PORT over TCP and the server there completed the attachment handshake (lookup-only)
with key K, i.e. signed the holder's fresh nonce with K (a *dial-back*). Until then the
record waits, unserved:

* **waiting** records (never proven, or whose dial-back failed) are bounded: at most
  ``max_waiting`` under the key and ``waiting_per_source`` per source network (the /24 or
  /48 the ``store`` came from; ``quota`` beyond it). When the pool is full, a newcomer pushes
  out the newest waiting record of the network holding the most waiting records, if that is
  more than its own network holds (else ``storage_full``);
* dial-backs go only to public addresses (loopback, private ones only when the holder's own
  address has that scope: an overlay on one machine or one LAN), at most ``dials_in_flight``
  at once, ``dials_per_s`` in all and ``target_dials_per_s`` per target /24 (/48), the
  sources taking turns; a failed one is retried after ``retry_s``, doubling up to
  ``max_retry_s``; a listed record is dialled again every ``reverify_s`` and unlisted when
  that fails; a record whose address changed is dialled again before it is listed again;
* **listed** records: at most ``listed_per_network`` per advertised /24 (/48) and
  ``max_listed`` in all; a proven record beyond those waits on **standby** (counted as
  waiting) and takes the place of a listed one that goes. When ``max_listed`` is reached, a
  newly proven record from a network holding fewer listed records than the most listed one
  takes the place of that network's latest listed record;
* records this node stored itself (its own record; ``local``) are listed without a dial-back.

Answers (:meth:`Directory.answer`) spread over networks: one record per network per round,
records listed longest first (by the power-of-two of seconds listed, so near-equals tie),
chance among equals. Never "newest ``issued_at`` first": that time is the signer's word.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from overlay.core.addresses import LOOPBACK, NEVER, PRIVATE, PUBLIC, network_key, scope
from overlay.core.directory_keys import directory_key
from overlay.core.rate_limit import KeyedBuckets
from overlay.core.records import SignedRecord, StorageFull, SupernodeRecord
from overlay.dht.fairness import LOCAL, QuotaExceeded

Slot = tuple[bytes, str]


@dataclass(frozen=True)
class DirectoryLimits:
    #: supernodes listed per advertised IPv4 /24 or IPv6 /48 (``--directory-per-network``)
    listed_per_network: int = 4
    #: records listed under one directory key (``--directory-key-cap``)
    max_listed: int = 128
    #: records not listed (unproven, failed, standby) under one key, in all and per source
    #: network (``--directory-key-cap`` sets it equal to ``max_listed``)
    max_waiting: int = 128
    waiting_per_source: int = 16
    dials_in_flight: int = 4
    dials_per_s: float = 10.0
    dial_burst: float = 20.0
    #: per target /24 (/48): one dial-back every 5 s, 4 at once (at least
    #: ``listed_per_network``: that many supernodes of one network may need one together)
    target_dials_per_s: float = 0.2
    target_dial_burst: float = 4.0
    #: TCP connect plus handshake
    dial_timeout_s: float = 5.0
    reverify_s: float = 1800.0
    #: a failed dial-back is tried again after 15 s, doubling up to an hour: a supernode
    #: that was not listening yet (its record handed over while it started, or one dial lost
    #: under load) is listed within seconds, not 5 min later; the per-target-/24 budget
    #: above bounds what junk records' retries cost (the waiting pool holds at most 128)
    retry_s: float = 15.0
    max_retry_s: float = 3600.0
    #: records per ``find_value`` answer (the datagram's limit)
    answer_max: int = 48


class Status(Enum):
    WAITING = "waiting"
    STANDBY = "standby"
    LISTED = "listed"


@dataclass(frozen=True)
class DialBack:
    """Dial ``host:port`` and complete a lookup-only handshake expecting ``node_key``."""

    node_key: bytes
    host: str
    port: int


@dataclass
class Entry:
    #: the directory (shard) key the record is stored under
    key: bytes
    signed: SignedRecord
    record: SupernodeRecord
    #: the network the record was stored from (``local``: this node)
    source: str
    #: the advertised address's /24 (/48)
    network: str
    arrival: int
    status: Status = Status.WAITING
    dialling: bool = False
    #: when the next dial-back is due (inf: never, e.g. a local or undialable record)
    next_dial: float = 0.0
    failures: int = 0
    listed_since: float = math.inf

    @property
    def address(self) -> tuple[str, int]:
        return (self.record.host, self.record.port)

    @property
    def failed(self) -> bool:
        """Waiting after a failed dial-back, or at an address never dialled."""
        return self.status is Status.WAITING and not self.dialling and (
            self.failures > 0 or math.isinf(self.next_dial))


@dataclass
class DirectoryStats:
    #: dial-back outcomes: verified, failed, undialable (never dialled), deferred (rate)
    dials: Counter[str] = field(default_factory=Counter)
    #: records refused or pushed out of the waiting pool, by reason
    refused: Counter[str] = field(default_factory=Counter)


class Directory:
    """Verification state of the records under the directory key, by slot."""

    def __init__(self, limits: DirectoryLimits | None = None) -> None:
        self.limits = limits or DirectoryLimits()
        #: by (directory key, slot): a supernode that moved to another network has a record
        #: under each key until the old one expires
        self.entries: dict[tuple[bytes, Slot], Entry] = {}
        self.stats = DirectoryStats()
        self.in_flight = 0
        #: the scope of this holder's own address; None: dial nothing (a bare DHT node)
        self.own_scope: str | None = None
        #: called when a dial-back may have become due (the adapter wakes up)
        self.on_work: Callable[[], None] | None = None
        self._arrivals = 0
        self._dial_budget: KeyedBuckets[str] = KeyedBuckets(
            self.limits.dials_per_s, self.limits.dial_burst, 1)
        self._target_budget: KeyedBuckets[str] = KeyedBuckets(
            self.limits.target_dials_per_s,
            max(self.limits.target_dial_burst, self.limits.listed_per_network), 4096)
        self._last_turn: dict[str, int] = {}
        self._turns = 0
        #: the last answer per key, reused within the same second until the listing changes
        self._answers: dict[bytes, tuple[int, int, list[SignedRecord]]] = {}

    def enable_dial_backs(self, own_host: str) -> None:
        """Dial-backs run (an adapter calls :meth:`dials_due`); ``own_host`` is this holder's
        advertised address, whose scope decides whether loopback/private targets are dialled."""
        kind = scope(own_host)
        self.own_scope = PUBLIC if kind in NEVER else kind  # 0.0.0.0: a public node
        for entry in self.entries.values():  # records stored before: dial them now
            if entry.source != LOCAL and entry.status is Status.WAITING \
                    and math.isinf(entry.next_dial) and self._dialable(entry.record.host):
                entry.next_dial = 0.0

    # -- storage's side ------------------------------------------------------------------

    def _under(self, key: bytes) -> list[Entry]:
        return [e for e in self.entries.values() if e.key == key]

    def make_room(self, key: bytes, slot: Slot, source: str) -> list[Slot]:
        """Before a new slot is stored under ``key`` from ``source`` (a network, or
        ``local``): the waiting records to push out (the caller evicts them), or raises
        ``QuotaExceeded`` or ``StorageFull``."""
        if (key, slot) in self.entries or source == LOCAL:
            return []
        lim = self.limits
        under = self._under(key)
        waiting = Counter(e.source for e in under if e.status is not Status.LISTED)
        mine = waiting[source]
        if mine >= lim.waiting_per_source:
            # the network's newest record already found wanting makes room (so a spoofer
            # sending junk in a network's name cannot lock its supernodes out), else refused
            failed = [e for e in under if e.source == source and e.failed]
            if failed:
                self.stats.refused["pushed_out"] += 1
                return [max(failed, key=lambda e: e.arrival).signed.slot]
            self.stats.refused["quota"] += 1
            raise QuotaExceeded(f"{source} has {mine} supernode records waiting for a dial-back")
        if sum(waiting.values()) < lim.max_waiting:
            return []
        newest = {src: max(e.arrival for e in under if e.source == src) for src in waiting}
        crowded, most = max(waiting.items(), key=lambda kv: (kv[1], newest[kv[0]]))
        if most <= mine:
            self.stats.refused["storage_full"] += 1
            raise StorageFull(f"{sum(waiting.values())} supernode records wait for a dial-back")
        victim = max((e for e in under
                      if e.source == crowded and e.status is not Status.LISTED),
                     key=lambda e: e.arrival)
        self.stats.refused["pushed_out"] += 1
        return [victim.signed.slot]

    def stored(self, signed: SignedRecord, source: str, now: float) -> None:
        """``signed`` is now the record of its slot (new, or replacing the slot's record),
        sent from network ``source`` (``local``: stored by this node itself)."""
        record = signed.record
        assert isinstance(record, SupernodeRecord)
        self._answers.pop(signed.dht_key, None)
        ref = (signed.dht_key, signed.slot)
        entry = self.entries.get(ref)
        if entry is not None and entry.address == (record.host, record.port):
            entry.signed, entry.record = signed, record  # a refresh: the proof still holds
            if source == LOCAL:
                entry.next_dial = math.inf
                self._proven(entry, now)
            return
        if entry is not None:
            self._unlist(entry, now)
        self._arrivals += 1
        entry = Entry(signed.dht_key, signed, record, source, network_key(record.host),
                      self._arrivals, next_dial=now)
        self.entries[ref] = entry
        if source == LOCAL:
            entry.next_dial = math.inf
            self._proven(entry, now)
        elif not self._dialable(record.host):
            entry.next_dial = math.inf
            self.stats.dials["undialable"] += 1
        elif self.on_work is not None:
            self.on_work()

    def removed(self, key: bytes, slot: Slot, now: float) -> None:
        """The slot's record under ``key`` left the storage (expired or evicted)."""
        entry = self.entries.pop((key, slot), None)
        if entry is not None:
            self._answers.pop(entry.key, None)
        if entry is not None and entry.status is Status.LISTED:
            self._fill(entry.key, entry.network, now)

    def is_listed(self, key: bytes, slot: Slot) -> bool:
        entry = self.entries.get((key, slot))
        return entry is not None and entry.status is Status.LISTED

    def counts(self) -> Counter[str]:
        """Records by status (``listed``, ``standby``, ``waiting``), over every key."""
        return Counter(e.status.value for e in self.entries.values())

    def per_key(self) -> Counter[bytes]:
        """Records held under each directory key (listed and not)."""
        return Counter(e.key for e in self.entries.values())

    def listed(self) -> list[SignedRecord]:
        """Every listed record this holder has, whatever its key."""
        return [e.signed for e in self.entries.values() if e.status is Status.LISTED]

    # -- listing ---------------------------------------------------------------------------

    def _listed_in(self, key: bytes, network: str) -> int:
        return sum(1 for e in self.entries.values()
                   if e.status is Status.LISTED and e.key == key and e.network == network)

    def _proven(self, entry: Entry, now: float) -> None:
        """The record's address proved its key: list it if there is room, else standby."""
        entry.failures = 0
        if entry.status is Status.LISTED:
            return
        lim = self.limits
        if self._listed_in(entry.key, entry.network) >= lim.listed_per_network:
            entry.status = Status.STANDBY
            return
        listed = Counter(e.network for e in self.entries.values()
                         if e.status is Status.LISTED and e.key == entry.key)
        if sum(listed.values()) >= lim.max_listed:
            crowded, most = max(listed.items(), key=lambda kv: kv[1])
            if most <= listed[entry.network] + 1:
                entry.status = Status.STANDBY
                return
            latest = max((e for e in self.entries.values() if e.status is Status.LISTED
                          and e.key == entry.key and e.network == crowded),
                         key=lambda e: e.listed_since)
            latest.status = Status.STANDBY
        entry.status = Status.LISTED
        entry.listed_since = now

    def _unlist(self, entry: Entry, now: float) -> None:
        was_listed = entry.status is Status.LISTED
        entry.status = Status.WAITING
        entry.listed_since = math.inf
        if was_listed:
            self._fill(entry.key, entry.network, now)

    def _fill(self, key: bytes, network: str, now: float) -> None:
        """A listed place came free under ``key`` in ``network``: the standby proven first
        takes it (one of that network, else any)."""
        self._answers.pop(key, None)
        standby = [e for e in self.entries.values()
                   if e.status is Status.STANDBY and e.key == key]
        standby.sort(key=lambda e: (e.network != network, e.arrival))
        for entry in standby:
            self._proven(entry, now)
            if entry.status is Status.LISTED:
                return

    def answer(self, key: bytes, now: float, rng: random.Random, limit: int | None = None
               ) -> list[SignedRecord]:
        """Listed records under ``key`` for a ``find_value`` answer, spread over networks
        (see above); the same answer within a second while the listing does not change."""
        cap = self.limits.answer_max if limit is None else limit
        cached = self._answers.get(key)
        if cached is not None and cached[:2] == (int(now), cap):
            return list(cached[2])
        ranked = [
            (entry.network, -int(math.log2(1.0 + max(0.0, now - entry.listed_since))),
             entry.signed)
            for entry in self.entries.values()
            if entry.status is Status.LISTED and entry.key == key
            and entry.signed.expires_at > now
        ]
        chosen = round_robin(ranked, self.limits.listed_per_network, cap, rng)
        self._answers[key] = (int(now), cap, chosen)
        return list(chosen)

    # -- dial-backs --------------------------------------------------------------------------

    def _dialable(self, host: str) -> bool:
        kind = scope(host)
        if self.own_scope is None or kind in NEVER:
            return False
        if kind == PUBLIC:
            return True
        if kind == LOOPBACK:
            return self.own_scope == LOOPBACK
        return kind == PRIVATE and self.own_scope in (PRIVATE, LOOPBACK)

    def dials_due(self, now: float) -> list[DialBack]:
        """The dial-backs to start now (each answered by :meth:`dial_done`)."""
        lim = self.limits
        if self.own_scope is None:
            return []
        due = [e for e in self.entries.values() if not e.dialling and e.next_dial <= now]
        out: list[DialBack] = []
        while due and self.in_flight < lim.dials_in_flight:
            # sources take turns: the one served least recently first, then the oldest due
            entry = min(due, key=lambda e: (self._last_turn.get(e.source, -1), e.next_dial,
                                            e.arrival))
            due.remove(entry)
            if not self._target_budget.allow(entry.network, now):
                entry.next_dial = now + 1.0 / max(lim.target_dials_per_s, 1e-3)
                self.stats.dials["deferred"] += 1
                continue
            if not self._dial_budget.allow("", now):
                break
            self._turns += 1
            self._last_turn[entry.source] = self._turns
            if len(self._last_turn) > 4 * (lim.max_listed + lim.max_waiting):
                sources = {e.source for e in self.entries.values()}
                self._last_turn = {s: t for s, t in self._last_turn.items() if s in sources}
            entry.dialling = True
            self.in_flight += 1
            out.append(DialBack(entry.record.node_key, entry.record.host, entry.record.port))
        return out

    def dial_done(self, dial: DialBack, proven: bool, now: float) -> None:
        """A dial-back ended: the server at the address proved ``dial.node_key`` or not."""
        self.in_flight = max(0, self.in_flight - 1)
        entry = self.entries.get((directory_key(dial.host), (dial.node_key, "")))
        if entry is None or not entry.dialling:
            return
        self._answers.pop(entry.key, None)
        entry.dialling = False
        if entry.address != (dial.host, dial.port):
            entry.next_dial = now  # the address changed meanwhile: dial the new one
            return
        lim = self.limits
        if proven:
            self.stats.dials["verified"] += 1
            entry.next_dial = now + lim.reverify_s
            self._proven(entry, now)
            return
        self.stats.dials["failed"] += 1
        entry.failures += 1
        entry.next_dial = now + min(lim.max_retry_s, lim.retry_s * 2 ** (entry.failures - 1))
        self._unlist(entry, now)

    def get_timer(self) -> float | None:
        """When a dial-back is next due (None: none is, or none may start now)."""
        if self.own_scope is None or self.in_flight >= self.limits.dials_in_flight:
            return None
        due = [e.next_dial for e in self.entries.values() if not e.dialling]
        soonest = min(due, default=math.inf)
        return None if math.isinf(soonest) else soonest

    def records(self) -> Iterable[Entry]:
        return self.entries.values()


def round_robin(ranked: Iterable[tuple[str, int, SignedRecord]], per_network: int, limit: int,
                rng: random.Random) -> list[SignedRecord]:
    """``(network, rank, record)`` in answer order: one record of each network per round, at
    most ``per_network`` of one network, lower rank first within a network and a round,
    chance among equals; at most ``limit``."""
    by_network: dict[str, list[tuple[int, float, SignedRecord]]] = {}
    for network, rank, signed in ranked:
        by_network.setdefault(network, []).append((rank, rng.random(), signed))
    rounds: list[list[tuple[int, float, SignedRecord]]] = []
    for items in by_network.values():
        items.sort(key=lambda t: t[:2])
        for i, item in enumerate(items[:per_network]):
            if len(rounds) <= i:
                rounds.append([])
            rounds[i].append(item)
    out: list[SignedRecord] = []
    for round_ in rounds:
        round_.sort(key=lambda t: t[:2])
        out.extend(item[2] for item in round_)
    return out[:limit]


def choose(found: Iterable[SignedRecord], holders: Mapping[bytes, Iterable[SignedRecord]],
           per_network: int, limit: int, rng: random.Random) -> list[SignedRecord]:
    """The supernodes a reader uses, from a lookup's merged records and each holder's own
    answer: those at least two holders list (one, when only one holder answered), so one
    holder cannot list records of its own making; spread over the advertised /24s (/48s),
    at most ``per_network`` of one, those more holders list first, chance among equals."""
    vouched: Counter[Slot] = Counter(s.slot for held in holders.values() for s in held)
    need = min(2, len(holders))
    ranked = []
    for signed in found:
        record = signed.record
        if isinstance(record, SupernodeRecord) and vouched[signed.slot] >= need:
            network = network_key(record.host)
            ranked.append((network, -vouched[signed.slot], signed))
    return round_robin(ranked, per_network, limit, rng)

"""Record storage for DHT nodes: only verified records, several per key, bounded.

Subclasses ``kademlia.storage.IStorage`` (whose stock ``ForgetfulStorage`` keeps one value per
key, last writer wins, and lets every holder refresh a value's age forever). Here:

* a value enters only through :func:`overlay.core.records.verify` and only under the DHT key the
  record says it is for;
* a key holds one record per slot (owner key, device): a higher sequence number replaces a
  lower one, never the other way;
* names are sticky: while a live record for a name (a presence record, or a name claim, which
  lives 31 days) is signed by one key, records for that name signed by any other key are
  refused (``NameClaimed``). Only nodes that hold the name can refuse: lookups therefore take
  the key held by the majority of the name's holders (:mod:`overlay.dht.names`);
* expiry comes from the signed record itself, so handing a record on never extends it;
* entries, bytes and values per key are bounded;
* fairness (:mod:`overlay.dht.fairness`): each signer and each source network (IPv4 /24, IPv6
  /48 of the sender) holds at most a quota of entries and bytes (``quota``); when the node is
  full it evicts instead of refusing, in this order: only records of a source network holding
  more entries than the newcomer's own; from the most represented network first (among
  equals, the one with the latest arrival); newest arrival first; a network holding no more
  than its fair share (max_entries and max_bytes divided by the networks holding records,
  the newcomer's included) keeps its name claims and, per name, its longest-held presence
  record. Records this node stored itself (``local``) are never evicted. When nothing may be
  evicted the store is refused (``storage_full``): a filler cannot push out records held
  before it started, only churn its own.
* the supernode directory's keys (:mod:`overlay.dht.directory`, one per shard:
  :mod:`overlay.core.directory_keys`): a supernode record is served
  (:meth:`RecordStorage.values`, :meth:`RecordStorage.answer`) only once listed, i.e. once a
  dial-back proved its address holds its key (or this node stored it itself); records waiting
  for that are bounded per source network, and a listed one is protected like a name claim.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kademlia.storage import IStorage

from overlay.core import records
from overlay.core.directory_keys import is_directory_key
from overlay.core.records import (
    NameClaimed,
    RecordError,
    RecordKind,
    SignedRecord,
    StaleSequence,
    StorageFull,
    SupernodeRecord,
    WrongKey,
)
from overlay.dht.directory import Directory, DirectoryLimits
from overlay.dht.fairness import LOCAL, Ledger, QuotaExceeded, Ref, source_group

Slot = tuple[bytes, str]


@dataclass(frozen=True)
class StorageLimits:
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    max_values_per_key: int = 256
    #: per signing key (a user has a claim and a presence record per device)
    max_entries_per_signer: int = 64
    max_bytes_per_signer: int = 64 * 1024
    #: per source network (IPv4 /24, IPv6 /48); an eighth of the node each
    max_entries_per_source: int = 12_500
    max_bytes_per_source: int = 8 * 1024 * 1024
    #: a node takes a ``store`` only when it is among the ksize * close_slack closest nodes
    #: it knows to the key (or knows fewer than ksize nodes)
    close_slack: int = 2
    #: records looked at, at most, to find eviction victims for one store
    eviction_scan: int = 256
    #: verified records remembered, so a record seen again is not re-verified
    verify_cache_entries: int = 4096
    #: which supernode records are listed (served) under the directory key
    directory: DirectoryLimits = field(default_factory=DirectoryLimits)


@dataclass
class StoredEntry:
    signed: SignedRecord
    #: when this slot was first stored here (a refresh keeps it)
    stored_at: float


@dataclass
class StorageStats:
    stored: int = 0
    replaced: int = 0
    unchanged: int = 0
    evicted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class RecordVerifier:
    """``records.verify`` with a bounded cache of records already verified.

    The signature and schema of a given byte string never change, so a hit (the same bytes,
    found by their BLAKE2b-128 and compared whole) only re-checks time: an expired record is
    refused and leaves the cache. Least recently used entries go first when it is full. A
    value lookup meets the same record once per holder that answers (up to k), so each node
    verifies its signature once.
    """

    def __init__(self, entries: int) -> None:
        self._cache: OrderedDict[bytes, SignedRecord] = OrderedDict()
        self._entries = entries
        self.hits = 0
        self.misses = 0

    def verify(self, wire: object, now: float) -> SignedRecord:
        if not isinstance(wire, bytes) or len(wire) > records.MAX_RECORD_BYTES:
            return records.verify(wire, now)
        tag = hashlib.blake2b(wire, digest_size=16).digest()
        hit = self._cache.get(tag)
        if hit is not None and hit.wire == wire:
            try:
                records.check_lifetime(hit.record, now)
            except RecordError:
                del self._cache[tag]
                raise
            self._cache.move_to_end(tag)
            self.hits += 1
            return hit
        signed = records.verify(wire, now)
        self.misses += 1
        self._cache[tag] = signed
        while len(self._cache) > self._entries:
            self._cache.popitem(last=False)
        return signed

    def __len__(self) -> int:
        return len(self._cache)


class RecordStorage(IStorage):  # type: ignore[misc]
    def __init__(
        self,
        limits: StorageLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits or StorageLimits()
        self.clock = clock
        self.verifier = RecordVerifier(self.limits.verify_cache_entries)
        self.data: dict[bytes, dict[Slot, StoredEntry]] = {}
        self.stats = StorageStats()
        self.ledger = Ledger()
        #: the supernode directory: dial-back state of the records under its key
        self.directory = Directory(self.limits.directory)
        self.rng = random.Random()
        self._entries = 0
        self._bytes = 0
        self._last_cull = float("-inf")

    # -- our interface ---------------------------------------------------------------------

    def put(self, key: bytes, wire: object, source: str | None = None) -> SignedRecord:
        """Store a record under ``key``, sent from IP ``source`` (``None``: this node itself);
        raises a :class:`RecordError` and changes nothing when the record is refused (other
        records may have been evicted to make room). Storing the same record again is a
        no-op."""
        try:
            return self._put(key, wire, source_group(source))
        except RecordError as exc:
            self.stats.rejected[exc.reason] += 1
            raise

    def _put(self, key: bytes, wire: object, group: str) -> SignedRecord:
        now = self.clock()
        signed = self.verifier.verify(wire, now)
        if signed.dht_key != key:
            raise WrongKey("record is for another DHT key")
        slots = self.data.get(key)
        if slots is not None:
            self._drop_expired(key, slots, now)
            slots = self.data.get(key)
        existing = slots.get(signed.slot) if slots else None
        if existing is not None:
            if existing.signed.wire == signed.wire:
                self.stats.unchanged += 1
                return existing.signed
            if signed.seq <= existing.signed.seq:
                raise StaleSequence(
                    f"sequence {signed.seq} is not newer than stored {existing.signed.seq}"
                )
        name = signed.record.claimed_name
        if name is not None and slots:
            for entry in slots.values():
                if entry.signed.record.signer != signed.record.signer:
                    raise NameClaimed(
                        f"name {name!r} is held by another key until "
                        f"{entry.signed.expires_at:.0f}"
                    )
        size = len(signed.wire)
        grows = existing is None
        supernode = isinstance(signed.record, SupernodeRecord)
        sender = group
        pushed_out = (self.directory.make_room(key, signed.slot, sender)
                      if supernode and grows else [])
        if grows and slots is not None and len(slots) - len(pushed_out) >= \
                self.limits.max_values_per_key:
            raise StorageFull(f"key holds {len(slots)} values already")
        ref: Ref = (key, signed.slot)
        owner = self.ledger.usage(ref)
        if owner is not None:
            group = owner[1]  # a slot counts under the network it first came from
        added_bytes = size - (len(existing.signed.wire) if existing else 0)
        self._check_quota(signed.record.signer, group, grows, added_bytes)
        for slot in pushed_out:  # waiting supernode records of a crowded network
            self._evict((key, slot))
        if self._over(grows, added_bytes):
            self._cull_if_due(now)
        if self._over(grows, added_bytes):
            victims = self._victims(ref, group, grows, added_bytes)
            if victims is None:
                raise StorageFull(f"{self._entries} entries, {self._bytes} bytes stored already")
            for victim in victims:
                self._evict(victim)
        held_since = existing.stored_at if existing is not None else now
        self.data.setdefault(key, {})[signed.slot] = StoredEntry(signed, held_since)
        self._bytes += added_bytes
        if grows:
            self.ledger.add(ref, signed.record.signer, group, size)
            self._entries += 1
            self.stats.stored += 1
        else:
            self.ledger.resize(ref, added_bytes)
            self.stats.replaced += 1
        if supernode:
            self.directory.stored(signed, sender, now)
        return signed

    # -- fairness ----------------------------------------------------------------------------

    def _check_quota(self, signer: bytes, group: str, grows: bool, added: int) -> None:
        lim = self.limits
        entries, size = self.ledger.signers.get(signer, (0, 0))
        if (grows and entries >= lim.max_entries_per_signer) or (
            added > 0 and size + added > lim.max_bytes_per_signer
        ):
            raise QuotaExceeded(f"the signer holds {entries} records, {size} bytes here")
        if group == LOCAL:
            return
        entries, size = self.ledger.sources.get(group, (0, 0))
        if (grows and entries >= lim.max_entries_per_source) or (
            added > 0 and size + added > lim.max_bytes_per_source
        ):
            raise QuotaExceeded(f"{group} holds {entries} records, {size} bytes here")

    def _over(self, grows: bool, added: int) -> bool:
        return (grows and self._entries >= self.limits.max_entries) or (
            self._bytes + added > self.limits.max_bytes
        )

    def _cull_if_due(self, now: float) -> None:
        """Drop expired records, at most once a second (a full scan is not per store)."""
        if abs(now - self._last_cull) >= 1.0:
            self._last_cull = now
            self.cull()

    def _victims(self, ref: Ref, group: str, grows: bool, added: int) -> list[Ref] | None:
        """Records to evict so the newcomer fits, in the documented order; ``None`` when
        nothing may go."""
        need_entries = 1 if grows and self._entries >= self.limits.max_entries else 0
        need_bytes = self._bytes + added - self.limits.max_bytes
        mine = 0 if group == LOCAL else self.ledger.entries_of(group)
        # the fair share: an equal part of the node for each network that would hold records
        networks = self.ledger.remote_sources() + (1 if group != LOCAL and not mine else 0)
        fair_entries = self.limits.max_entries // max(1, networks)
        fair_bytes = self.limits.max_bytes // max(1, networks)
        chosen: list[Ref] = []
        scanned = 0
        for source, count, size in self.ledger.crowded(mine):
            for victim in self.ledger.newest_first(source):
                scanned += 1
                if scanned > self.limits.eviction_scan or count <= mine:
                    break
                within_share = count <= fair_entries and size <= fair_bytes
                if victim == ref or (within_share and self._protected(victim)):
                    continue
                chosen.append(victim)
                victim_size = len(self.data[victim[0]][victim[1]].signed.wire)
                count -= 1
                size -= victim_size
                need_entries -= 1
                need_bytes -= victim_size
                if need_entries <= 0 and need_bytes <= 0:
                    return chosen
            if scanned > self.limits.eviction_scan:
                break
        return None

    def _protected(self, ref: Ref) -> bool:
        """A name claim, or the presence record held longest under its key."""
        key, slot = ref
        slots = self.data[key]
        kind = slots[slot].signed.record.kind
        if kind is RecordKind.NAME_CLAIM:
            return True
        if kind is RecordKind.SUPERNODE:
            return self.directory.is_listed(key, slot)
        if kind is not RecordKind.PRESENCE:
            return False
        oldest = min(
            (s for s, e in slots.items() if e.signed.record.kind is RecordKind.PRESENCE),
            key=lambda s: slots[s].stored_at,
        )
        return oldest == slot

    def _evict(self, ref: Ref) -> None:
        key, slot = ref
        slots = self.data[key]
        self._remove(key, slots, slot)
        self.stats.evicted += 1
        if not slots:
            self.data.pop(key, None)

    def _remove(self, key: bytes, slots: dict[Slot, StoredEntry], slot: Slot) -> None:
        size = len(slots.pop(slot).signed.wire)
        self.ledger.remove((key, slot), size)
        self._bytes -= size
        self._entries -= 1
        if is_directory_key(key):
            self.directory.removed(key, slot, self.clock())

    def values(self, key: bytes) -> list[SignedRecord]:
        """Live records under ``key`` that this node serves: under the supernode directory's
        keys, only the listed ones (proven by a dial-back, :mod:`overlay.dht.directory`)."""
        slots = self.data.get(key)
        if not slots:
            return []
        self._drop_expired(key, slots, self.clock())
        held = self.data.get(key, {})
        if is_directory_key(key):
            return [e.signed for slot, e in held.items()
                    if self.directory.is_listed(key, slot)]
        return [entry.signed for entry in held.values()]

    def answer(self, key: bytes, limit: int) -> list[SignedRecord]:
        """What a ``find_value`` for ``key`` is answered with, at most ``limit`` records:
        the directory's choice (spread over networks, longest listed first) for the
        supernode directory; otherwise name claims first, then the newest."""
        if is_directory_key(key):
            self.values(key)  # drop the expired
            return self.directory.answer(key, self.clock(), self.rng, limit)
        found = self.values(key)
        # name claims first (they decide who owns a name), then the newest
        found.sort(key=lambda s: (s.record.kind != RecordKind.NAME_CLAIM, -s.record.issued_at))
        return found[:limit]

    def keys(self) -> list[bytes]:
        return list(self.data)

    def cull(self) -> None:
        now = self.clock()
        for key in list(self.data):
            self._drop_expired(key, self.data[key], now)

    def _drop_expired(self, key: bytes, slots: dict[Slot, StoredEntry], now: float) -> None:
        dead = [slot for slot, e in slots.items() if e.signed.expires_at <= now]
        for slot in dead:
            self._remove(key, slots, slot)
        if not slots:
            self.data.pop(key, None)

    @property
    def entry_count(self) -> int:
        return self._entries

    @property
    def byte_count(self) -> int:
        return self._bytes

    # -- kademlia's IStorage ---------------------------------------------------------------

    def __setitem__(self, key: bytes, value: object) -> None:
        self.put(key, value)

    def __getitem__(self, key: bytes) -> list[bytes]:
        found = self.values(key)
        if not found:
            raise KeyError(key)
        return [s.wire for s in found]

    def get(self, key: bytes, default: object = None) -> object:
        found = self.values(key)
        return [s.wire for s in found] if found else default

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        """Records whose slot was first stored here more than ``seconds_old`` ago (kademlia's
        republish input).

        Our server does not republish what others published; this exists for the interface.
        """
        limit = self.clock() - seconds_old
        return [
            (key, e.signed.wire)
            for key, slots in self.data.items()
            for e in slots.values()
            if e.stored_at <= limit
        ]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self.cull()
        return iter(
            [(key, e.signed.wire) for key, slots in self.data.items() for e in slots.values()]
        )

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
* entries, bytes and values per key are bounded.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kademlia.storage import IStorage

from overlay.core import records
from overlay.core.records import (
    NameClaimed,
    RecordError,
    SignedRecord,
    StaleSequence,
    StorageFull,
    WrongKey,
)

Slot = tuple[bytes, str]


@dataclass(frozen=True)
class StorageLimits:
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    max_values_per_key: int = 256
    #: verified records remembered, so a record seen again is not re-verified
    verify_cache_entries: int = 4096


@dataclass
class StoredEntry:
    signed: SignedRecord
    stored_at: float


@dataclass
class StorageStats:
    stored: int = 0
    replaced: int = 0
    unchanged: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class RecordVerifier:
    """``records.verify`` with a bounded cache of records already verified.

    The signature and schema of a given byte string never change, so a hit only re-checks time.
    """

    def __init__(self, entries: int) -> None:
        self._cache: dict[bytes, SignedRecord] = {}
        self._entries = entries

    def verify(self, wire: object, now: float) -> SignedRecord:
        if isinstance(wire, bytes) and len(wire) <= records.MAX_RECORD_BYTES:
            tag = hashlib.blake2b(wire, digest_size=16).digest()
            hit = self._cache.get(tag)
            if hit is not None and hit.wire == wire:
                records.check_lifetime(hit.record, now)
                return hit
            signed = records.verify(wire, now)
            if len(self._cache) >= self._entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[tag] = signed
            return signed
        return records.verify(wire, now)


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
        self._entries = 0
        self._bytes = 0

    # -- our interface ---------------------------------------------------------------------

    def put(self, key: bytes, wire: object) -> SignedRecord:
        """Store a record under ``key``; raises a :class:`RecordError` and changes nothing
        when the record is refused. Storing the same record again is a no-op."""
        try:
            return self._put(key, wire)
        except RecordError as exc:
            self.stats.rejected[exc.reason] += 1
            raise

    def _put(self, key: bytes, wire: object) -> SignedRecord:
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
        if grows and slots is not None and len(slots) >= self.limits.max_values_per_key:
            raise StorageFull(f"key holds {len(slots)} values already")
        if grows and self._entries >= self.limits.max_entries:
            self.cull()
            if self._entries >= self.limits.max_entries:
                raise StorageFull(f"{self._entries} entries stored already")
        added_bytes = size - (len(existing.signed.wire) if existing else 0)
        if self._bytes + added_bytes > self.limits.max_bytes:
            self.cull()
            if self._bytes + added_bytes > self.limits.max_bytes:
                raise StorageFull(f"{self._bytes} bytes stored already")
        self.data.setdefault(key, {})[signed.slot] = StoredEntry(signed, now)
        self._bytes += added_bytes
        if grows:
            self._entries += 1
            self.stats.stored += 1
        else:
            self.stats.replaced += 1
        return signed

    def values(self, key: bytes) -> list[SignedRecord]:
        """Live records under ``key``."""
        slots = self.data.get(key)
        if not slots:
            return []
        self._drop_expired(key, slots, self.clock())
        return [entry.signed for entry in self.data.get(key, {}).values()]

    def keys(self) -> list[bytes]:
        return list(self.data)

    def cull(self) -> None:
        now = self.clock()
        for key in list(self.data):
            self._drop_expired(key, self.data[key], now)

    def _drop_expired(self, key: bytes, slots: dict[Slot, StoredEntry], now: float) -> None:
        dead = [slot for slot, e in slots.items() if e.signed.expires_at <= now]
        for slot in dead:
            self._bytes -= len(slots.pop(slot).signed.wire)
            self._entries -= 1
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
        """Records received more than ``seconds_old`` ago (kademlia's republish input).

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

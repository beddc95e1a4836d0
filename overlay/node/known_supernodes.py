"""The supernodes a public node knows and hands to clients: its host cache, as Skype's
supernodes served theirs (sans-IO: records and time in, a sample out).

The directory is sharded (:mod:`overlay.core.directory_keys`), so no node reads all of it: each
directory read (:meth:`overlay.dht.DHTNode.supernodes`: what this node lists itself plus a few
random shards) is merged into what earlier reads found, records kept until they expire, at most
``max_known``. When over, the nearest half by Vivaldi coordinate (to this node) stays, and a
random choice of the rest: over time a node knows the supernodes near it, plus some anywhere.

A sample for a client (``DirectoryResponse``, ``Refused``/``Moving`` alternatives) is the
nearest to this node first -- a client that reached this node is near it, so those are near the
client too, and its probes refine towards them -- then a random choice of the others; full
supernodes (by their records) last.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from overlay.core.records import SignedRecord, SupernodeRecord
from overlay.core.vivaldi import Coordinate, for_prediction

#: records a node keeps
MAX_KNOWN = 512
#: of a sample, the share that is nearest to this node (the rest is chance)
NEAR_SHARE = 0.5


class KnownSupernodes:
    def __init__(self, max_known: int = MAX_KNOWN) -> None:
        self.max_known = max_known
        self.records: dict[bytes, SignedRecord] = {}

    def __len__(self) -> int:
        return len(self.records)

    def add(self, found: Iterable[SignedRecord], now: float, near: Coordinate | None,
            rng: random.Random) -> None:
        """Merge a directory read's records (newest per supernode), drop the expired, and
        keep at most ``max_known`` (the nearest half to ``near``, then chance)."""
        for signed in found:
            record = signed.record
            if not isinstance(record, SupernodeRecord):
                continue
            held = self.records.get(record.node_key)
            if held is None or signed.seq > held.seq:
                self.records[record.node_key] = signed
        self.records = {k: s for k, s in self.records.items() if s.expires_at > now}
        if len(self.records) > self.max_known:
            keep = self._ordered(list(self.records.values()), near, rng)[: self.max_known]
            self.records = {_key(s): s for s in keep}

    def sample(self, limit: int, now: float, near: Coordinate | None, rng: random.Random,
               exclude: bytes = b"") -> list[SignedRecord]:
        """At most ``limit`` live records: the nearest to ``near`` first (``NEAR_SHARE`` of
        them), then chance; supernodes full by their records last."""
        live = [s for k, s in self.records.items() if s.expires_at > now and k != exclude]
        ordered = self._ordered(live, near, rng)
        ordered.sort(key=_full)  # stable: full ones last, the order kept otherwise
        return ordered[:limit]

    @staticmethod
    def _ordered(found: list[SignedRecord], near: Coordinate | None, rng: random.Random
                 ) -> list[SignedRecord]:
        """The nearer half by predicted RTT to ``near`` (those with a usable coordinate),
        then the rest in random order."""
        shuffled = list(found)
        rng.shuffle(shuffled)
        if near is None:
            return shuffled
        placed = [(s, _coordinate(s)) for s in shuffled]
        known = [(s, c) for s, c in placed if c is not None]
        known.sort(key=lambda sc: near.distance(sc[1]))
        nearest = [s for s, _ in known[: max(1, int(len(found) * NEAR_SHARE))]]
        chosen = {id(s) for s in nearest}
        return nearest + [s for s in shuffled if id(s) not in chosen]


def _key(signed: SignedRecord) -> bytes:
    record = signed.record
    assert isinstance(record, SupernodeRecord)
    return record.node_key


def _coordinate(signed: SignedRecord) -> Coordinate | None:
    record = signed.record
    return for_prediction(record.coords) if isinstance(record, SupernodeRecord) else None


def _full(signed: SignedRecord) -> bool:
    record = signed.record
    return isinstance(record, SupernodeRecord) and 0 < record.max_clients <= record.load

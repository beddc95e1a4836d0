"""Who holds how much of a node's storage: quotas per signer and per source network, and the
order in which records are evicted when the node is full (sans-IO; used by ``dht/storage``).

A record's *source* is the network it first arrived from: the sender's IPv4 /24 or IPv6
/48, or ``local`` for records this node stored itself (its own publishes). A record keeps
the source and the arrival position of its slot's first store when its owner refreshes it,
so a refresh never makes a long-held record look new.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterator

from overlay.core.addresses import network_of
from overlay.core.records import RecordError

LOCAL = "local"

Ref = tuple[bytes, tuple[bytes, str]]  # (DHT key, slot)


class QuotaExceeded(RecordError):
    """The record's signer or source network holds its quota of entries or bytes."""

    reason = "quota"


class NotClose(RecordError):
    """This node is not among the nodes closest to the key (with slack)."""

    reason = "not_close"


@functools.lru_cache(maxsize=65536)
def source_group(ip: str | None) -> str:
    """The network a sender counts under: IPv4 /24, IPv6 /48, ``local`` for ``None``.
    Cached: asked on every ``store`` (``ipaddress`` parsing costs ~30 us)."""
    if ip is None:
        return LOCAL
    return network_of(ip) or f"?{ip[:64]}"


class Ledger:
    """Entries and bytes per signer and per source, and each source's records by arrival."""

    def __init__(self) -> None:
        self.signers: dict[bytes, list[int]] = {}  # signer -> [entries, bytes]
        self.sources: dict[str, list[int]] = {}  # source -> [entries, bytes]
        self._arrivals: dict[str, OrderedDict[Ref, None]] = {}
        self._owner: dict[Ref, tuple[bytes, str]] = {}  # ref -> (signer, source)
        self._by_count: dict[int, dict[str, None]] = {}  # entries -> sources (not local)

    def usage(self, ref: Ref) -> tuple[bytes, str] | None:
        return self._owner.get(ref)

    def add(self, ref: Ref, signer: bytes, source: str, size: int) -> None:
        self._owner[ref] = (signer, source)
        s = self.signers.setdefault(signer, [0, 0])
        s[0] += 1
        s[1] += size
        g = self.sources.setdefault(source, [0, 0])
        self._move(source, g[0], g[0] + 1)
        g[0] += 1
        g[1] += size
        self._arrivals.setdefault(source, OrderedDict())[ref] = None

    def resize(self, ref: Ref, delta: int) -> None:
        signer, source = self._owner[ref]
        self.signers[signer][1] += delta
        self.sources[source][1] += delta

    def remove(self, ref: Ref, size: int) -> None:
        signer, source = self._owner.pop(ref)
        s = self.signers[signer]
        s[0] -= 1
        s[1] -= size
        if s[0] <= 0:
            del self.signers[signer]
        g = self.sources[source]
        self._move(source, g[0], g[0] - 1)
        g[0] -= 1
        g[1] -= size
        arrivals = self._arrivals[source]
        del arrivals[ref]
        if g[0] <= 0:
            del self.sources[source]
            del self._arrivals[source]

    def _move(self, source: str, old: int, new: int) -> None:
        if source == LOCAL:
            return
        if old > 0:
            bucket = self._by_count[old]
            del bucket[source]
            if not bucket:
                del self._by_count[old]
        if new > 0:
            self._by_count.setdefault(new, {})[source] = None

    def entries_of(self, source: str) -> int:
        return self.sources.get(source, [0, 0])[0]

    def remote_sources(self) -> int:
        return sum(len(b) for b in self._by_count.values())

    def crowded(self, than: int) -> Iterator[tuple[str, int, int]]:
        """(source, entries, bytes) of sources other than ``local`` holding more than
        ``than`` entries: most entries first; among equals, the one whose count changed
        last (its newest arrival) first."""
        for count in sorted(self._by_count, reverse=True):
            if count <= than:
                return
            for source in reversed(list(self._by_count.get(count, ()))):
                yield source, count, self.sources[source][1]

    def newest_first(self, source: str) -> Iterator[Ref]:
        """The source's records, newest arrival first (do not change the ledger meanwhile)."""
        return reversed(self._arrivals.get(source, OrderedDict()))

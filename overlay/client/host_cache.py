"""The client's host cache: supernodes it has known, so a restart needs no bootstrap node.

One JSON file in the state dir (mode 0600, replaced atomically)::

    {"version": 1,
     "supernodes": [{"host": "203.0.113.7", "port": 4000, "node_key": "<hex>",
                     "load": 3, "max_clients": 100, "rtt_ms": 12.5,
                     "last_success": 1700000000.0, "last_seen": 1700000000.0,
                     "failures": 0}, ...],
     "bootstrap_keys": {"198.51.100.1:4000": "<hex>"}}

Entries come only from verified supernode records (or alternatives that named a key) and
are identified by node key; the key is what the client pins when it connects. The cache is
bounded: entries that keep failing and have not worked for a long time are dropped first.
``bootstrap_keys`` remembers the key each bootstrap node showed on first contact (TOFU).
A malformed file is ignored (and replaced on the next save), never fatal.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from overlay.client.attach_policy import Candidate
from overlay.core.files import write_private_json
from overlay.core.identity import PUBLIC_KEY_BYTES
from overlay.core.logs import get_logger

log = get_logger(__name__)

CACHE_FILE = "supernodes.json"
CACHE_VERSION = 1
MAX_ENTRIES = 64
MAX_BOOTSTRAP_KEYS = 64
MAX_FILE_BYTES = 1 << 20
#: entries with at least this many consecutive failures ...
DROP_AFTER_FAILURES = 5
#: ... and no success for this long are forgotten
DROP_AFTER_S = 7 * 24 * 3600.0


@dataclass
class CacheEntry:
    host: str
    port: int
    node_key: bytes
    load: int = 0
    max_clients: int = 0
    rtt_ms: float | None = None
    last_success: float | None = None
    last_seen: float = 0.0
    failures: int = 0

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.host, self.port, self.node_key, self.load, self.max_clients)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["node_key"] = self.node_key.hex()
        return out

    @classmethod
    def from_json(cls, raw: Any) -> CacheEntry:
        if not isinstance(raw, dict):
            raise ValueError("an entry is an object")
        host, port, key = raw.get("host"), raw.get("port"), raw.get("node_key")
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("bad address")
        ipaddress.ip_address(host)
        if not isinstance(key, str) or len(bytes.fromhex(key)) != PUBLIC_KEY_BYTES:
            raise ValueError("bad node key")

        def num(name: str) -> float | None:
            value = raw.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"bad {name}")
            return float(value)

        def count(name: str) -> int:
            value = raw.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"bad {name}")
            return value

        return cls(
            host=host, port=port, node_key=bytes.fromhex(key), load=count("load"),
            max_clients=count("max_clients"), rtt_ms=num("rtt_ms"),
            last_success=num("last_success"), last_seen=num("last_seen") or 0.0,
            failures=count("failures"),
        )


class HostCache:
    """Supernodes by node key. ``path`` None keeps it in memory only."""

    def __init__(self, path: Path | None, max_entries: int = MAX_ENTRIES) -> None:
        self.path = path
        self.max_entries = max_entries
        self.entries: dict[bytes, CacheEntry] = {}
        self.bootstrap_keys: dict[str, bytes] = {}
        self.dirty = False

    @classmethod
    def in_state_dir(cls, state_dir: Path | None) -> HostCache:
        cache = cls(state_dir / CACHE_FILE if state_dir is not None else None)
        cache.load()
        return cache

    # -- persistence ----------------------------------------------------------------------

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("file too large")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
                raise ValueError("unknown format")
            raw_entries = data.get("supernodes", [])
            raw_keys = data.get("bootstrap_keys", {})
            if not isinstance(raw_entries, list) or not isinstance(raw_keys, dict):
                raise ValueError("unknown format")
        except (OSError, ValueError) as exc:
            log.warning("host_cache_ignored", path=str(self.path), error=str(exc))
            return
        skipped = 0
        for raw in raw_entries[: self.max_entries * 2]:
            try:
                entry = CacheEntry.from_json(raw)
            except (ValueError, TypeError):
                skipped += 1
                continue
            self.entries[entry.node_key] = entry
        for addr, key in list(raw_keys.items())[:MAX_BOOTSTRAP_KEYS]:
            try:
                pinned = bytes.fromhex(key) if isinstance(key, str) else b""
            except ValueError:
                pinned = b""
            if isinstance(addr, str) and len(pinned) == PUBLIC_KEY_BYTES:
                self.bootstrap_keys[addr] = pinned
            else:
                skipped += 1
        if skipped:
            log.warning("host_cache_entries_skipped", path=str(self.path), skipped=skipped)
        self._prune(now=None)

    def save(self) -> None:
        """Write the cache atomically with mode 0600 (no-op without a path or changes)."""
        if self.path is None or not self.dirty:
            return
        data = {
            "version": CACHE_VERSION,
            "supernodes": [e.to_json() for e in self.ordered()],
            "bootstrap_keys": {a: k.hex() for a, k in self.bootstrap_keys.items()},
        }
        write_private_json(self.path, data, indent=1)
        self.dirty = False

    # -- queries ----------------------------------------------------------------------------

    def ordered(self) -> list[CacheEntry]:
        """Most recently working first, then most recently seen."""
        return sorted(
            self.entries.values(),
            key=lambda e: (e.last_success or 0.0, e.last_seen, -e.failures),
            reverse=True,
        )

    def candidates(self) -> list[Candidate]:
        return [e.candidate for e in self.ordered()]

    def __len__(self) -> int:
        return len(self.entries)

    # -- updates ----------------------------------------------------------------------------

    def add(self, cand: Candidate, now: float) -> None:
        """Remember a supernode from a verified record (address and load may have changed)."""
        entry = self.entries.get(cand.node_key)
        if entry is None:
            entry = CacheEntry(cand.host, cand.port, cand.node_key)
            self.entries[cand.node_key] = entry
        entry.host, entry.port = cand.host, cand.port
        if cand.max_clients or cand.load:
            entry.load, entry.max_clients = cand.load, cand.max_clients
        entry.last_seen = now
        self.dirty = True
        self._prune(now)

    def measured(self, node_key: bytes, rtt_s: float | None, now: float) -> None:
        entry = self.entries.get(node_key)
        if entry is None:
            return
        if rtt_s is None:
            entry.failures += 1
        else:
            entry.rtt_ms = round(rtt_s * 1000, 3)
            entry.last_seen = now
        self.dirty = True

    def succeeded(self, cand: Candidate, now: float) -> None:
        self.add(cand, now)
        entry = self.entries[cand.node_key]
        entry.last_success = now
        entry.failures = 0

    def failed(self, node_key: bytes) -> None:
        entry = self.entries.get(node_key)
        if entry is not None:
            entry.failures += 1
            self.dirty = True

    def pin_bootstrap(self, address: str, node_key: bytes) -> None:
        if self.bootstrap_keys.get(address) != node_key:
            self.bootstrap_keys[address] = node_key
            while len(self.bootstrap_keys) > MAX_BOOTSTRAP_KEYS:
                del self.bootstrap_keys[next(iter(self.bootstrap_keys))]
            self.dirty = True

    def _prune(self, now: float | None) -> None:
        if now is not None:
            for key, e in list(self.entries.items()):
                stale = now - (e.last_success or 0.0) > DROP_AFTER_S
                if e.failures >= DROP_AFTER_FAILURES and stale:
                    del self.entries[key]
                    self.dirty = True
        if len(self.entries) > self.max_entries:
            keep = self.ordered()[: self.max_entries]
            self.entries = {e.node_key: e for e in keep}
            self.dirty = True

"""The supernode directory's DHT keys: one per shard, a supernode's shard from its network.

A supernode record lives under ``directory_key(host)``: the shard of the IPv4 /24 (IPv6 /48)
of its advertised address, hashed (``SHARD_BITS`` bits of SHA-256 of the network's text), so
every node computes the same key for a record, and all supernodes of one network share one
key: the per-network listing cap of :mod:`overlay.dht.directory` (4 per /24 at each holder of
the key) bounds a network in the whole directory, not per shard. Any one supernode's record is
one lookup away for whoever knows its address. At 10,000 supernodes on distinct /24s a shard
holds ~20 records (Poisson; the fullest of 512 ~35, one above 48 with probability 1e-5): under
the per-key cap (``--directory-key-cap``, default 128 listed) and within one ``find_value``
answer (48), so every listed record is in every answer. A network constant, like the id
puzzle.
"""

from __future__ import annotations

import hashlib

from overlay.core.addresses import network_key

SHARD_BITS = 9
SHARDS = 1 << SHARD_BITS


def shard_key(shard: int) -> bytes:
    """The DHT key of directory shard ``shard`` (0 <= shard < SHARDS)."""
    if not 0 <= shard < SHARDS:
        raise ValueError(f"a directory shard is in [0, {SHARDS})")
    return hashlib.sha256(b"overlay/supernodes/%d" % shard).digest()[:20]


SHARD_KEYS: tuple[bytes, ...] = tuple(shard_key(s) for s in range(SHARDS))
_SHARD_OF_KEY = {key: shard for shard, key in enumerate(SHARD_KEYS)}


def shard_of(host: str) -> int:
    """The shard of a supernode advertising ``host`` (the shard of its /24 or /48)."""
    digest = hashlib.sha256(b"overlay/shard/" + network_key(host).encode()).digest()
    return int.from_bytes(digest[:2], "big") >> (16 - SHARD_BITS)


def directory_key(host: str) -> bytes:
    """The DHT key the supernode record advertising ``host`` is stored under."""
    return SHARD_KEYS[shard_of(host)]


def is_directory_key(key: bytes) -> bool:
    return key in _SHARD_OF_KEY


def shard_of_key(key: bytes) -> int | None:
    """The shard whose key is ``key`` (None: not a directory key)."""
    return _SHARD_OF_KEY.get(key)

"""The supernode directory's DHT keys: one per shard, a supernode's shard from its node id.

A supernode record lives under ``shard_key(shard_of(node_key))``: the shard is the first
``SHARD_BITS`` bits of the supernode's node id (SHA-256 of its key), so every node computes
the same key for a record and a reader can find any supernode's record with one lookup. At
10,000 supernodes a shard holds ~20 records (Poisson; the fullest of 512 ~35, one above 48
with probability 1e-5): under the per-key cap (``--directory-key-cap``, default 128 listed)
and within one ``find_value`` answer (48), so every listed record is in every answer. A
network constant, like the id puzzle.
"""

from __future__ import annotations

import hashlib

from overlay.core.identity import node_id_for

SHARD_BITS = 9
SHARDS = 1 << SHARD_BITS


def shard_key(shard: int) -> bytes:
    """The DHT key of directory shard ``shard`` (0 <= shard < SHARDS)."""
    if not 0 <= shard < SHARDS:
        raise ValueError(f"a directory shard is in [0, {SHARDS})")
    return hashlib.sha256(b"overlay/supernodes/%d" % shard).digest()[:20]


SHARD_KEYS: tuple[bytes, ...] = tuple(shard_key(s) for s in range(SHARDS))
_SHARD_OF_KEY = {key: shard for shard, key in enumerate(SHARD_KEYS)}


def shard_of(node_key: bytes) -> int:
    """The shard of the supernode whose ed25519 public key is ``node_key``."""
    return int.from_bytes(node_id_for(node_key)[:2], "big") >> (16 - SHARD_BITS)


def directory_key(node_key: bytes) -> bytes:
    """The DHT key the supernode record of ``node_key`` is stored under."""
    return SHARD_KEYS[shard_of(node_key)]


def is_directory_key(key: bytes) -> bool:
    return key in _SHARD_OF_KEY


def shard_of_key(key: bytes) -> int | None:
    """The shard whose key is ``key`` (None: not a directory key)."""
    return _SHARD_OF_KEY.get(key)

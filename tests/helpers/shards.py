"""Supernode addresses that share a directory shard (:mod:`overlay.core.directory_keys`):
tests that fill one directory key with records from distinct networks need hosts whose /24s
hash to the same shard. They are loopback /24s (127.0.0.0/8 has 65,536; the lab's
198.18.0.0/15 only 512, about one per shard), so nothing ever leaves the machine."""

from __future__ import annotations

from overlay.core.directory_keys import shard_of


def hosts_in_one_shard(count: int, last_octet: int = 10) -> list[str]:
    """``count`` hosts ``127.X.Y.<last_octet>`` in distinct /24s, all in one shard."""
    by_shard: dict[int, list[str]] = {}
    for second in range(16, 256):
        for third in range(256):
            host = f"127.{second}.{third}.{last_octet}"
            same = by_shard.setdefault(shard_of(host), [])
            same.append(host)
            if len(same) == count:
                return same
    raise ValueError(f"no shard holds {count} loopback /24s")

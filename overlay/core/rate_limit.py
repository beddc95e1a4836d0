"""Token buckets by key (sans-IO: time is passed in, nothing else is read).

One :class:`KeyedBuckets` serves every per-source or per-key rate limit: DHT requests per
source IP, verification pings per /24, signals per caller/supernode/target, HTTP per client.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedBuckets(Generic[K]):
    """One token bucket per key: ``rate`` tokens a second, at most ``burst``; a new key
    starts full. At most ``max_keys`` keys are kept: the least recently seen is forgotten
    first (and would start full again)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("a bucket needs rate >= 0, burst >= 1 and room for a key")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        #: key -> (tokens, time of the last refill)
        self._buckets: OrderedDict[K, tuple[float, float]] = OrderedDict()

    def allow(self, key: K, now: float) -> bool:
        """Take one token for ``key`` if it has one. A clock that went back refills nothing."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, max(now, last))
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)

"""Per-source token buckets for the DHT (sans-IO)."""

from __future__ import annotations

from collections import OrderedDict


class PerIpRateLimiter:
    """Token bucket per source IP, with a bounded number of IPs tracked (LRU)."""

    def __init__(self, rate: float, burst: float, max_ips: int = 65536) -> None:
        self.rate, self.burst, self.max_ips = rate, burst, max_ips
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, ip: str, now: float) -> bool:
        tokens, last = self._buckets.pop(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[ip] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_ips:
            self._buckets.popitem(last=False)
        return allowed

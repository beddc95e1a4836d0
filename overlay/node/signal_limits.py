"""Token buckets by key for signals (sans-IO: time is passed in, nothing else is read).

:class:`SignalLimiter` holds the three limits a supernode applies to the DHT method
``signal`` (:class:`~overlay.node.supernode_options.SignalLimits`): per caller key, per
forwarding supernode (the DHT envelope's key) and per target user.
"""

from __future__ import annotations

from overlay.core.rate_limit import KeyedBuckets
from overlay.node.supernode_options import SignalLimits


class SignalLimiter:
    """The per-caller, per-forwarding-supernode and per-target buckets of one supernode."""

    def __init__(self, limits: SignalLimits) -> None:
        n = limits.max_tracked_keys
        self.callers: KeyedBuckets[bytes] = KeyedBuckets(
            limits.per_caller_rate, limits.per_caller_burst, n)
        self.supernodes: KeyedBuckets[bytes] = KeyedBuckets(
            limits.per_supernode_rate, limits.per_supernode_burst, n)
        self.targets: KeyedBuckets[str] = KeyedBuckets(
            limits.per_target_rate, limits.per_target_burst, n)

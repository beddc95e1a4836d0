"""Callees that reach a relay before their caller: which the relay holds, and for how long.

The callee starts its relay half as it answers the invite, the caller when that answer
arrives, so the callee usually comes first. A relay that refused it (``unknown token``) made
it ask again on a new connection every 0.05-0.25 s, and the session paired only when one of
those asks landed after the caller's hello: up to a quarter of a second plus a TCP handshake
late. So the relay holds such a callee for :data:`EARLY_CALLEE_HOLD_S` and pairs it the moment
the caller's hello creates the session; only then, or when the hold ends, is it answered.

A held callee has shown no credential (a callee never does) and holds no budget, only its
connection: the relay holds at most :data:`EARLY_PER_IP` from one IP, :data:`EARLY_PER_NETWORK`
from one IPv4 /24 (IPv6 /48) and :data:`EARLY_MAX` in all, and one per token. Past any of
these, or once the hold ends, the callee is refused ``unknown token`` as before (and asks
again). Sans-IO: the relay server owns the connections and the timers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from overlay.core.addresses import network_key

#: how long a callee whose caller has not come yet is held (the caller is one answer's
#: delivery behind it: a round trip or two)
EARLY_CALLEE_HOLD_S = 3.0
#: callees held at once from one IP, from one /24 (/48), and in all
EARLY_PER_IP = 8
EARLY_PER_NETWORK = 16
EARLY_MAX = 256

Link = TypeVar("Link")


@dataclass
class EarlyCallees(Generic[Link]):
    """The callees held, by token, with the counts their limits are checked against."""

    per_ip: int = EARLY_PER_IP
    per_network: int = EARLY_PER_NETWORK
    total: int = EARLY_MAX
    held: dict[bytes, tuple[Link, str]] = field(default_factory=dict)
    _ips: Counter[str] = field(default_factory=Counter)
    _networks: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, token: bytes, link: Link, ip: str) -> bool:
        """Hold ``link`` (a callee from ``ip``) until the caller of ``token`` comes; False
        when a limit says no (one callee per token; per IP, per network, in all)."""
        net = network_key(ip)
        if (token in self.held or len(self.held) >= self.total
                or self._ips[ip] >= self.per_ip or self._networks[net] >= self.per_network):
            return False
        self.held[token] = (link, ip)
        self._ips[ip] += 1
        self._networks[net] += 1
        return True

    def take(self, token: bytes) -> Link | None:
        """The callee held for ``token`` (no longer held), or None."""
        entry = self.held.pop(token, None)
        if entry is None:
            return None
        link, ip = entry
        self._forget(ip)
        return link

    def drop(self, token: bytes, link: Link) -> bool:
        """Stop holding ``link`` (its hold ended or it left); False when it is not held."""
        entry = self.held.get(token)
        if entry is None or entry[0] is not link:
            return False
        del self.held[token]
        self._forget(entry[1])
        return True

    def _forget(self, ip: str) -> None:
        for counter, key in ((self._ips, ip), (self._networks, network_key(ip))):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

"""Which lookup-only sessions have been idle longest (sans-IO: time is passed in).

A lookup-only session (a throwaway key, ``HelloFlags.LOOKUP_ONLY``) costs a connection slot
for as long as it stays open, and answering pings keeps it open. :class:`IdleLookups` keeps
them in order of their last request, so :class:`~overlay.node.tcp_service.TcpService` can
close the longest-idle one when its table is nearly full and every one idle past an absolute
limit. A session with a request in flight is not idle.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class IdleLookups(Generic[K]):
    def __init__(self) -> None:
        #: key -> (requests in flight, when it last became idle), longest idle first
        self._sessions: OrderedDict[K, tuple[int, float]] = OrderedDict()

    def add(self, key: K, now: float) -> None:
        self._sessions[key] = (0, now)

    def remove(self, key: K) -> None:
        self._sessions.pop(key, None)

    def busy(self, key: K) -> None:
        """A request from ``key`` is being answered."""
        if key in self._sessions:
            n, since = self._sessions[key]
            self._sessions[key] = (n + 1, since)

    def done(self, key: K, now: float) -> None:
        """A request from ``key`` was answered: it is idle again from ``now``."""
        if key in self._sessions:
            n, _ = self._sessions.pop(key)
            self._sessions[key] = (max(0, n - 1), now)

    def idle_for(self, now: float, at_least: float) -> list[K]:
        """Keys idle for ``at_least`` seconds by ``now``, longest idle first."""
        out = []
        for key, (n, since) in self._sessions.items():
            if now - since < at_least:
                break
            if n == 0:
                out.append(key)
        return out

    def longest_idle(self, now: float, at_least: float) -> K | None:
        """The key idle longest, if it has been idle for ``at_least`` seconds."""
        for key, (n, since) in self._sessions.items():
            if now - since < at_least:
                return None
            if n == 0:
                return key
        return None

    def __len__(self) -> int:
        return len(self._sessions)

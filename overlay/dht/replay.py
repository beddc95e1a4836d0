"""Replay protection for DHT requests (sans-IO).

A request is refused (dropped unanswered, counted by reason) when

* ``wrong_recipient``: its recipient is neither this node's id nor :data:`ANY_RECIPIENT`;
* ``any_recipient``: its recipient is :data:`ANY_RECIPIENT` and its method is not one of
  :data:`ANY_METHODS` (``ping``, ``find_node``: what a node sends to a bootstrap address whose
  key it does not know yet). Such a request can be replayed to *other* nodes within the window,
  once each; all it gets there is a pong or contacts, and no state changes;
* ``stale``: its timestamp is more than :data:`WINDOW_S` away from this node's clock (the
  records' clock-skew window);
* ``replayed``: the same (sender key, msg_id) was seen within the window. The cache holds at
  most :data:`MAX_SEEN` entries; when it is full the entry with the oldest timestamp goes and
  every request stamped at or before it is refused from then on (``stale``), so an eviction
  never lets a replay through: under a flood the window only narrows from its old end (a
  flood stamped in the future is evicted last, so it cannot push honest requests out).
"""

from __future__ import annotations

import heapq

from overlay.dht.envelope import ANY_RECIPIENT, Envelope

WINDOW_S = 60.0
MAX_SEEN = 65536
ANY_METHODS = frozenset({"ping", "find_node"})


class ReplayGuard:
    def __init__(self, own_id: bytes, window_s: float = WINDOW_S, max_seen: int = MAX_SEEN):
        self.own_id = own_id
        self.window_ms = int(window_s * 1000)
        self.max_seen = max_seen
        self._seen: set[bytes] = set()
        self._by_stamp: list[tuple[int, bytes]] = []
        #: requests stamped at or before this (ms) are refused: their entries may be gone
        self._floor_ms = 0

    def check(self, env: Envelope, method: str, now: float) -> str | None:
        """None when the request may be served (and remember it), else the refusal reason."""
        if env.recipient != self.own_id:
            if env.recipient != ANY_RECIPIENT:
                return "wrong_recipient"
            if method not in ANY_METHODS:
                return "any_recipient"
        now_ms = int(now * 1000)
        self._expire(now_ms)
        stamp = env.timestamp_ms
        if abs(stamp - now_ms) > self.window_ms or stamp <= self._floor_ms:
            return "stale"
        tag = env.sender_key + env.msg_id
        if tag in self._seen:
            return "replayed"
        self._seen.add(tag)
        heapq.heappush(self._by_stamp, (stamp, tag))
        while len(self._seen) > self.max_seen:
            evicted, old = heapq.heappop(self._by_stamp)
            self._seen.discard(old)
            self._floor_ms = max(self._floor_ms, evicted)
        return None

    def _expire(self, now_ms: int) -> None:
        """Entries stamped before the window can no longer pass the time check: drop them."""
        horizon = now_ms - self.window_ms
        while self._by_stamp and self._by_stamp[0][0] < horizon:
            _, tag = heapq.heappop(self._by_stamp)
            self._seen.discard(tag)

    def __len__(self) -> int:
        return len(self._seen)

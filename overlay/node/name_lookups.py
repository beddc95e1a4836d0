"""A supernode's name lookups, shared and remembered for a few seconds (asyncio adapter over
:func:`overlay.dht.names.lookup_name`).

One call setup asks a supernode about the same two names several times: the caller's
``LookupRequest`` for the callee, the forwarding of its invite (where the callee is attached),
then on the callee's supernode the signal gate's owner check of the caller, the callee's
``LookupRequest`` for the caller and the forwarding of its answer. Each is a majority lookup
over the DHT, several round trips apart. :class:`NameLookups` runs one lookup per name at a
time (later askers join the one in flight) and keeps an answer for :data:`LOOKUP_CACHE_S`.
A client's ``LookupRequest`` is always asked of the network (:meth:`NameLookups.fresh`: a
client polling for a change sees it at once); signalling uses what it left.

Only answers that name an online presence are kept: a user who just came online is never
answered "offline" from memory. An answer is the network's (records verified, the majority
rule applied), so keeping it for seconds weakens nothing the gate's own owner memory (30 s)
does not; a caller that finds a kept answer stale (the device moved) asks :meth:`fresh`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from overlay.core import records
from overlay.dht import DHTNode
from overlay.dht.names import NameLookup, lookup_name

#: how long a lookup's answer is used again
LOOKUP_CACHE_S = 5.0
#: names remembered at once (the least recently used is forgotten first)
MAX_CACHED = 4096


def online_presence(found: NameLookup, now: float) -> list[records.PresenceRecord]:
    """The online, unexpired presence records of a lookup's answer."""
    return [s.record for s in found.records
            if isinstance(s.record, records.PresenceRecord) and s.record.online
            and s.record.expires_at > now]


class NameLookups:
    def __init__(self, dht: DHTNode, ttl_s: float = LOOKUP_CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dht = dht
        self.ttl_s = ttl_s
        self.clock = clock
        self._kept: OrderedDict[str, tuple[float, NameLookup]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[NameLookup]] = {}
        #: answers given from memory / lookups run / askers that joined one in flight
        self.hits = self.runs = self.joined = 0

    def cached(self, name: str) -> NameLookup | None:
        """The kept answer for ``name``, if it is fresh."""
        kept = self._kept.get(name)
        if kept is None:
            return None
        if self.clock() >= kept[0]:
            del self._kept[name]
            return None
        self._kept.move_to_end(name)
        return kept[1]

    async def lookup(self, name: str) -> NameLookup:
        """``name``'s owner and records: kept, or the lookup in flight, or a new one."""
        found = self.cached(name)
        if found is not None:
            self.hits += 1
            return found
        return await self._join(name)

    async def fresh(self, name: str) -> NameLookup:
        """A new lookup (joining one that started after the kept answer), never memory."""
        self._kept.pop(name, None)
        return await self._join(name)

    def forget(self, name: str) -> None:
        self._kept.pop(name, None)

    async def _join(self, name: str) -> NameLookup:
        running = self._in_flight.get(name)
        if running is None:
            running = asyncio.ensure_future(self._run(name))
            running.add_done_callback(_seen)
            self._in_flight[name] = running
        else:
            self.joined += 1
        # one asker going away (its session closed) does not end the others' lookup
        return await asyncio.shield(running)

    async def _run(self, name: str) -> NameLookup:
        self.runs += 1
        try:
            found = await lookup_name(self.dht, name)
        finally:
            self._in_flight.pop(name, None)
        if online_presence(found, time.time()):
            self._kept.pop(name, None)
            self._kept[name] = (self.clock() + self.ttl_s, found)
            while len(self._kept) > MAX_CACHED:
                self._kept.popitem(last=False)
        return found


def _seen(task: asyncio.Future[NameLookup]) -> None:
    """Mark a lookup's outcome as retrieved (every asker may have gone away)."""
    if not task.cancelled():
        task.exception()

"""The supernode benchmark's lookup phase: lookup-only sessions sending ``LookupRequest``s.

The supernode cuts a session that sends more than ``ServiceLimits.requests_per_s`` (20/s,
burst 40), so each session paces itself to :data:`LOOKUP_RATE_PER_SESSION`; sessions x that
rate is the offered ceiling. Responses are counted (found = at least one record), not verified.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overlay.attach import (
    ClientConnection,
    Event,
    HandshakeComplete,
    LookupRequest,
    LookupResponse,
    MessageReceived,
    PeerClosed,
    PeerDead,
    ProtocolViolation,
)
from overlay.attach.adapter import SessionError, SessionProtocol
from overlay.core.identity import Identity
from overlay.node.tcp_service import ServiceLimits

SERVICE_LIMITS = ServiceLimits()
#: each lookup session stays under the supernode's per-session request rate (20/s, burst 40)
LOOKUP_RATE_PER_SESSION = 0.9 * SERVICE_LIMITS.requests_per_s
LOOKUP_TIMEOUT_S = 5.0


class LookupConn:
    """One lookup-only session to the supernode, driven by the sans-IO ClientConnection."""

    def __init__(self) -> None:
        self.proto: SessionProtocol | None = None
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.next_id = 1
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(self, proto: SessionProtocol, event: Event) -> None:
        if isinstance(event, HandshakeComplete):
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(event, MessageReceived):
            msg = event.message
            if type(msg) is LookupResponse:
                future = self.pending.pop(msg.request_id, None)
                if future is not None and not future.done():
                    future.set_result(len(msg.records))
        elif isinstance(event, ProtocolViolation | PeerClosed | PeerDead):
            self._fail(f"session closed: {type(event).__name__}")

    def on_lost(self, proto: SessionProtocol) -> None:
        self._fail(f"connection lost: {proto.close_reason}")

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(SessionError(reason))
        for future in self.pending.values():
            if not future.done():
                future.set_exception(SessionError(reason))
        self.pending.clear()

    async def open(self, host: str, port: int, source: str, node_key: bytes) -> None:
        loop = asyncio.get_running_loop()
        identity = Identity.generate()

        def make(now: float) -> ClientConnection:
            return ClientConnection(identity, expected_node_key=node_key, now=now,
                                    lookup_only=True)

        transport, proto = await loop.create_connection(
            lambda: SessionProtocol(make, self.on_event, self.on_lost), host, port,
            local_addr=(source, 0),
        )
        self.proto = proto
        assert isinstance(proto.conn, ClientConnection)
        transport.write(proto.conn.start_handshake())
        await self.ready

    def lookup(self, user: str) -> asyncio.Future[int]:
        assert self.proto is not None
        if self.proto.conn is None or self.proto.conn.closed:
            raise SessionError(f"session closed: {self.proto.close_reason}")
        request_id = self.next_id
        self.next_id += 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.proto.send(LookupRequest(request_id, user))
        return future

    def close(self) -> None:
        if self.proto is not None:
            self.proto.close("bench done")


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]



@dataclass
class LookupTally:
    """What the paced lookup loops saw: latencies of answered lookups and other outcomes."""

    latencies: list[float]
    outcome: Counter[str]


async def open_sessions(n: int, host: str, port: int, source: str,
                        node_key: bytes) -> tuple[list[LookupConn], list[LookupConn]]:
    """``n`` lookup sessions: (all, those that opened within 10 s)."""
    conns = [LookupConn() for _ in range(n)]
    opened = await asyncio.gather(
        *(asyncio.wait_for(c.open(host, port, source, node_key), 10.0) for c in conns),
        return_exceptions=True,
    )
    return conns, [c for c, r in zip(conns, opened, strict=True) if r is None]


async def drive_session(conn: LookupConn, users: Sequence[str], rng: random.Random,
                        sem: asyncio.Semaphore, first_at: float, deadline: float,
                        tally: LookupTally) -> None:
    """Lookups on one session, one every 1/:data:`LOOKUP_RATE_PER_SESSION` s from
    ``first_at`` until ``deadline`` (loop time), at most ``sem`` in flight over all."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / LOOKUP_RATE_PER_SESSION
    next_at = first_at
    while True:
        now = loop.time()
        if now >= deadline:
            return
        if next_at > now:
            await asyncio.sleep(next_at - now)
        async with sem:
            if loop.time() >= deadline:
                return
            next_at = loop.time() + interval
            t0 = time.perf_counter()
            try:
                found = await asyncio.wait_for(conn.lookup(rng.choice(users)),
                                               LOOKUP_TIMEOUT_S)
            except TimeoutError:
                tally.outcome["timeout"] += 1
                continue
            except SessionError:
                tally.outcome["session_lost"] += 1
                return
            tally.latencies.append(time.perf_counter() - t0)
            tally.outcome["found" if found else "empty"] += 1


def lookup_summary(tally: LookupTally, wall: float, opened: int, live: int,
                   concurrency: int) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    outcome = tally.outcome

    def ms(q: float) -> float | None:
        v = percentile(latencies, q)
        return None if v is None else round(v * 1000, 3)

    return {
        "per_s": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": ms(1.0),
        "sessions": live,
        "sessions_failed_to_open": opened - live,
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "answered": len(latencies),
        "found": outcome["found"],
        "empty": outcome["empty"],
        "timeouts": outcome["timeout"],
        "sessions_lost": outcome["session_lost"],
        "offered_ceiling_per_s": round(live * LOOKUP_RATE_PER_SESSION, 1),
    }


async def run_lookups(sessions: int, concurrency: int, seconds: float, host: str, port: int,
                      source: str, node_key: bytes, users: Sequence[str]) -> dict[str, Any]:
    """``seconds`` of lookups for random ``users`` over ``sessions`` paced sessions."""
    loop = asyncio.get_running_loop()
    conns, live = await open_sessions(sessions, host, port, source, node_key)
    tally = LookupTally([], Counter())
    sem = asyncio.Semaphore(concurrency)
    interval = 1.0 / LOOKUP_RATE_PER_SESSION
    rng = random.Random(1)
    started = loop.time()
    deadline = started + seconds
    await asyncio.gather(*(drive_session(c, users, rng, sem,
                                         started + i * interval / max(1, len(live)), deadline,
                                         tally)
                           for i, c in enumerate(live)))
    wall = loop.time() - started
    for c in conns:
        c.close()
    return lookup_summary(tally, wall, len(conns), len(live), concurrency)

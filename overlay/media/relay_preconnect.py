"""The caller's TCP connections to its first relays, opened while it waits for the answer.

A caller's relay hello carries the voucher the callee countersigns in its answer, so the hello
cannot go before the answer; the TCP handshake can. The callee's relay half starts as it
answers and the relay holds it (:mod:`overlay.relay.early_callees`), so where the race starts
a relay at once (no direct path can work, or a birthday punch runs) the session pairs as soon
as the caller's hello arrives: opening the connection during the answer's delivery saves the
caller one round trip to the relay before its first bytes.

Only the invite's first :data:`MAX_RELAYS` relays (the best ranked) are dialled, and only where
the candidate policy lets us dial them. A connection nobody used is closed when the path is
open (or failed); one older than :data:`MAX_AGE_S` is not used (the supernode drops a
connection that said nothing for 10 s: a contact request's wait outlasts that) but closed, and
the attempt dials anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable

from overlay.core.logs import get_logger
from overlay.media import candidate_policy

log = get_logger(__name__)

#: a preconnected relay socket is used only this long after it was opened (the supernode
#: drops a connection that said nothing for 10 s)
MAX_AGE_S = 5.0
#: relays dialled ahead: the first two of the invite's (when the first one's path loses a
#: packet, the second's is as early, not a TCP handshake later)
MAX_RELAYS = 2


class RelayPreconnect:
    """The relay connections opened ahead of the answer, for one session (at most
    :data:`MAX_RELAYS`)."""

    def __init__(self) -> None:
        self._opened: dict[tuple[str, int], tuple[asyncio.Task[socket.socket], float]] = {}

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The relays with a connection opened ahead and not taken yet."""
        return list(self._opened)

    def open(self, relays: Iterable[tuple[str, int, bytes]], own_reflexive: Iterable[str],
             ) -> None:
        """Start the TCP connections to the first :data:`MAX_RELAYS` of ``relays`` we may
        dial."""
        own = tuple(own_reflexive)
        loop = asyncio.get_running_loop()
        for host, port, _key in relays:
            if len(self._opened) >= MAX_RELAYS:
                return
            if (host, port) in self._opened or not candidate_policy.decide(host, own, ()).dial:
                continue
            self._opened[(host, port)] = (loop.create_task(_connect(host, port)), loop.time())

    def take(self, host: str, port: int) -> asyncio.Task[socket.socket] | None:
        """The connection to ``host:port`` (a task: it may still be opening), now the
        caller's; None when there is none, or it is too old to use (it is closed)."""
        entry = self._opened.pop((host, port), None)
        if entry is None:
            return None
        task, opened_at = entry
        if asyncio.get_running_loop().time() - opened_at > MAX_AGE_S:
            _close_when_done(task)
            return None
        return task

    def close(self) -> None:
        """Close the connections nobody took."""
        for task, _ in self._opened.values():
            _close_when_done(task)
        self._opened.clear()


async def _connect(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _close_when_done(task: asyncio.Task[socket.socket]) -> None:
    def done(t: asyncio.Task[socket.socket]) -> None:
        if t.cancelled():
            return
        if t.exception() is None:
            with contextlib.suppress(OSError):
                t.result().close()

    if task.done():
        done(task)
    else:
        task.cancel()
        task.add_done_callback(done)

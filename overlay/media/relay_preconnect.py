"""The caller's TCP connection to its first relay, opened while it waits for the answer.

A caller's relay hello carries the voucher the callee countersigns in its answer, so the hello
cannot go before the answer; the TCP handshake can. The callee's relay half starts as it
answers and the relay holds it (:mod:`overlay.relay.early_callees`), so where the race starts
a relay at once (no direct path can work, or a birthday punch runs) the session pairs as soon
as the caller's hello arrives: opening the connection during the answer's delivery saves the
caller one round trip to the relay before its first bytes.

Only the invite's first relay (the best ranked) is dialled, and only where the candidate policy
lets us dial it. A connection nobody used is closed when the path is open (or failed); one
older than :data:`MAX_AGE_S` is not used (the relay drops a connection that sends no hello for
10 s: a contact request's wait outlasts that) but closed, and the attempt dials anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable

from overlay.core.logs import get_logger
from overlay.media import candidate_policy

log = get_logger(__name__)

#: a preconnected relay socket is used only this long after it was opened (the relay waits
#: 10 s for a hello: ``overlay.relay.server.HELLO_TIMEOUT_S``)
MAX_AGE_S = 5.0


class RelayPreconnect:
    """At most one relay connection opened ahead of the answer, for one session."""

    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None
        self._task: asyncio.Task[socket.socket] | None = None
        self._opened_at = 0.0

    def open(self, relays: Iterable[tuple[str, int, bytes]], own_reflexive: Iterable[str],
             ) -> None:
        """Start the TCP connection to the first of ``relays`` we may dial."""
        own = tuple(own_reflexive)
        for host, port, _key in relays:
            if not candidate_policy.decide(host, own, ()).dial:
                continue
            loop = asyncio.get_running_loop()
            self.address = (host, port)
            self._opened_at = loop.time()
            self._task = loop.create_task(_connect(host, port))
            return

    def take(self, host: str, port: int) -> asyncio.Task[socket.socket] | None:
        """The connection to ``host:port`` (a task: it may still be opening), now the
        caller's; None when there is none, or it is too old to use (it is closed)."""
        task = self._task
        if task is None or (host, port) != self.address:
            return None
        self._task = None
        if asyncio.get_running_loop().time() - self._opened_at > MAX_AGE_S:
            _close_when_done(task)
            return None
        return task

    def close(self) -> None:
        """Close the connection if nobody took it."""
        if self._task is not None:
            _close_when_done(self._task)
            self._task = None


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

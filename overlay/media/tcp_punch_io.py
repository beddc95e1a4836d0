"""TCP hole punching (asyncio): connect from the media listener's port to one peer address
(the decision where and when is :mod:`overlay.media.tcp_punch`'s).

Both sides do the same, so the connection that comes out has no dialler and no acceptor:
each side writes the session id and reads 16 bytes. The peer's punching socket answers with
the session id (a simultaneous open). If our SYN reached the peer's listener instead (its
punching socket gone, or the peer reachable after all), the listener took our session id as
a dial's and the peer's ``tcp-accept`` speaks first: the 16 bytes are the start of its
``secure`` handshake, handed back to it (the path is then ``direct-tcp``), so punching never
takes a connection away from the peer's accept. Either way ``secure`` decides whether the
other end holds the session's keys.

Caller first (the callee's presence lists
:data:`~overlay.media.tcp_listener.TCP_FIRST_CAPABILITY`): the caller writes the caller-first
preamble instead of the session id and returns as soon as its connection is up, without
reading anything (:class:`PunchedFirst`): its salt, confirmation, ``SELECT`` and first bytes
follow at once, and reach the callee with its id, a round trip before they would have (the
callee's id reaches the caller half a round trip after the caller's reached the callee, and
the callee's salt, which the caller waited for, with it). The callee's punch takes the
preamble as the caller's id and secures the stream caller first; its listener, should the
caller's SYN reach it, does the same (:mod:`overlay.media.tcp_listener`).
"""

from __future__ import annotations

import asyncio
import hmac
import socket

from overlay.media.connect import Attempt, Pushback
from overlay.media.errors import PathLost
from overlay.media.stream import MediaStream, RelayRef, TcpByteStream, discard, discard_later
from overlay.media.tcp_listener import PREAMBLE_BYTES, caller_first_preamble
from overlay.media.tcp_punch import TCP_PUNCH_TIMEOUT_S, TcpPunchPlan

PATH_NAME = "tcp-punch"
#: the path of a punch that reached the peer's listener: a plain TCP connection
LISTENER_PATH_NAME = "direct-tcp"


def _bound_socket(local_port: int) -> socket.socket:
    """A TCP socket bound to ``local_port`` on every address, next to the listener there."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", local_port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def punch_tcp(local_port: int, host: str, port: int, session_id: bytes,
                    delay_s: float = 0.0, timeout: float = TCP_PUNCH_TIMEOUT_S,
                    sends_first: bool = False, takes_first: bool = False) -> MediaStream:
    """After ``delay_s``, connect from ``local_port`` to ``host:port`` and exchange the
    session id; the stream's path is ``"tcp-punch"`` (``"direct-tcp"`` when it reached the
    peer's listener). ``sends_first`` (a caller whose callee takes it): write the caller-first
    preamble and return at once; ``takes_first`` (a callee): take the caller's preamble as
    its id, and the stream is secured caller first. :class:`PathLost` on failure."""
    await asyncio.sleep(delay_s)
    loop = asyncio.get_running_loop()
    try:
        sock = _bound_socket(local_port)
    except OSError as exc:
        raise PathLost(f"cannot bind port {local_port} for punching: {exc}") from None
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
    except TimeoutError:
        sock.close()
        raise PathLost(f"no simultaneous open with {host}:{port} "
                       f"in {timeout:g}s") from None
    except OSError as exc:
        sock.close()
        raise PathLost(f"punching {host}:{port} failed: {exc}") from None
    except BaseException:  # cancelled: another path won
        sock.close()
        raise
    stream = TcpByteStream(reader, writer, path=PATH_NAME, caller_first=sends_first)
    if sends_first:
        writer.write(caller_first_preamble(session_id))
        return PunchedFirst(stream, session_id)
    try:
        writer.write(session_id)
        async with asyncio.timeout(timeout):
            theirs = await reader.readexactly(len(session_id))
    except (TimeoutError, asyncio.IncompleteReadError, OSError):
        writer.close()
        raise PathLost(f"the punched connection to {host}:{port} "
                       "did not name the session") from None
    except BaseException:
        writer.close()
        raise
    if hmac.compare_digest(theirs, session_id):
        return stream
    if takes_first and hmac.compare_digest(theirs, caller_first_preamble(session_id)):
        stream.caller_first = True
        return stream
    stream.path = LISTENER_PATH_NAME
    return Pushback(stream, theirs)


class PunchedFirst:
    """The caller's caller-first punched connection, returned before anything was read: the
    peer's first 16 bytes are its session id when its punching socket took our SYN (dropped
    here), or else the start of its listener's accepted handshake (kept; the path is then
    ``"direct-tcp"``, from the next read on). Whether the far end holds the session's keys
    is the caller-first ``secure``'s to find out (it drops the path unless the callee's
    confirmation verifies in time)."""

    caller_first = True
    relay: RelayRef | None = None

    def __init__(self, raw: TcpByteStream, session_id: bytes) -> None:
        self.raw = raw
        self.path = raw.path
        self._session_id = session_id
        #: where reads come from once the peer's first 16 bytes were looked at
        self._reads: Pushback | None = None

    async def send(self, data: bytes) -> None:
        await self.raw.send(data)

    async def recv(self, max_bytes: int = 65536) -> bytes:
        if self._reads is None:
            self._reads = Pushback(self.raw, await self._after_peer_id())
        return await self._reads.recv(max_bytes)

    async def _after_peer_id(self) -> bytes:
        """The peer's first bytes without its session id (all of them, path ``direct-tcp``,
        when they do not start with it)."""
        head = bytearray()
        while len(head) < PREAMBLE_BYTES:
            data = await self.raw.recv(65536)
            if not data:
                break
            head += data
        if len(head) >= PREAMBLE_BYTES and hmac.compare_digest(bytes(head[:PREAMBLE_BYTES]),
                                                               self._session_id):
            return bytes(head[PREAMBLE_BYTES:])
        self.path = LISTENER_PATH_NAME
        return bytes(head)

    async def close(self) -> None:
        await self.raw.close()

    async def discard(self) -> None:
        await discard(self.raw)


def punch_attempts(plan: TcpPunchPlan, local_port: int, session_id: bytes,
                   sends_first: bool = False, takes_first: bool = False
                   ) -> dict[str, Attempt]:
    """The race's attempts for ``plan``: ``tcp-punch-N`` for its N-th target (caller first,
    see :func:`punch_tcp`)."""
    def attempt(host: str, port: int) -> Attempt:
        async def punch() -> MediaStream:
            return await punch_tcp(local_port, host, port, session_id, plan.delay_s,
                                   sends_first=sends_first, takes_first=takes_first)
        return punch

    return {f"tcp-punch-{i}": attempt(h, p) for i, (h, p) in enumerate(plan.targets)}


class EarlyPunches:
    """The callee's punches, started as it sends its answer rather than when its supernode
    has acknowledged it (one signalling leg later): its SYNs leave before the caller's,
    which then pass its router when the caller punches on receiving the answer. The race
    gets attempts that wait for these; :meth:`release` cancels what the race did not use
    and closes what it did not take."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[MediaStream]] = {}
        self.taken: set[str] = set()

    def start(self, attempts: dict[str, Attempt]) -> dict[str, Attempt]:
        """Start the ``tcp-punch-N`` attempts of ``attempts`` now; ``attempts`` with those
        replaced by waiting for them."""
        out = dict(attempts)
        for name, attempt in attempts.items():
            if name.startswith(f"{PATH_NAME}-"):
                self.tasks[name] = asyncio.ensure_future(attempt())
                out[name] = self._waiter(name)
        return out

    def _waiter(self, name: str) -> Attempt:
        async def wait() -> MediaStream:
            stream = await self.tasks[name]
            self.taken.add(name)
            return stream
        return wait

    def release(self) -> None:
        for name, task in self.tasks.items():
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None and name not in self.taken:
                discard_later(task.result())

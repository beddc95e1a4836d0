"""Path selection: race every way two clients might reach each other; the first path that
completes the end-to-end authenticated handshake wins.

Attempts, with short staggered starts: direct TCP in both directions (the side that can be
reached is dialled by the other; each side dials the other's candidates and accepts on its own
listener), TCP hole punching from the listener's port (:mod:`overlay.media.tcp_punch`), UDP
hole punching with QUIC on top (``udp-punch``, or ``udp-birthday`` when one side is a
symmetric NAT: the relay then waits longer), then (when available) a relay. Every
attempt ends in :func:`overlay.media.secure_stream.secure` with the invite/answer keys (and
keys of its own per path, from both sides' path salts), so a path that reaches the wrong
party, or a party without the keys, never wins. The addresses dialled are the peer's
candidates that :mod:`overlay.media.candidate_policy` allows (the media service filters them).

Both sides may complete more than one path (two TCP connections crossing, say). The invite's
sender decides: it sends ``SELECT`` on the first path it completed and closes the others; the
other side uses the path on which ``SELECT`` arrives. A decision timeline is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from overlay.core.logs import get_logger
from overlay.core.tasks import TaskSet
from overlay.media.errors import MediaError
from overlay.media.stream import ByteStream, MediaStream, TcpByteStream

log = get_logger(__name__)

SELECT = b"\x00SELECT\x00"
TCP_CONNECT_TIMEOUT_S = 3.0
UDP_STAGGER_S = 0.25
RELAY_STAGGER_S = 1.5

#: with a birthday attempt (one symmetric side), the relay waits out its spray (1,024 probes
#: in 4.1 s after the UDP stagger, :mod:`overlay.media.birthday`; later on a loaded machine):
#: it succeeds 98 % of the time
BIRTHDAY_RELAY_STAGGER_S = 5.0

DEFAULT_STAGGERS = {"udp-punch": UDP_STAGGER_S, "udp-birthday": UDP_STAGGER_S,
                    "relay": RELAY_STAGGER_S}

Securer = Callable[[MediaStream], Awaitable[MediaStream]]
Attempt = Callable[[], Awaitable[MediaStream]]


def default_staggers(attempts: dict[str, Attempt]) -> dict[str, float]:
    """The start delays for these attempts: the relay's is longer next to a birthday attempt."""
    if "udp-birthday" in attempts:
        return {**DEFAULT_STAGGERS, "relay": BIRTHDAY_RELAY_STAGGER_S}
    return DEFAULT_STAGGERS


def stagger_for(name: str, staggers: dict[str, float]) -> float:
    """The start delay of attempt ``name`` ("relay-1" takes the delay of "relay")."""
    return next((delay for kind, delay in staggers.items() if name.startswith(kind)), 0.0)


class Pushback:
    """A MediaStream that first returns bytes already read from the one it wraps."""

    def __init__(self, stream: MediaStream, leftover: bytes) -> None:
        self.raw = stream
        self.leftover = leftover
        self.path = stream.path
        self.relay = stream.relay

    async def send(self, data: bytes) -> None:
        await self.raw.send(data)

    async def recv(self, max_bytes: int = 65536) -> bytes:
        if self.leftover:
            data, self.leftover = self.leftover[:max_bytes], self.leftover[max_bytes:]
            return data
        return await self.raw.recv(max_bytes)

    async def close(self) -> None:
        await self.raw.close()


_closing = TaskSet()


def close_later(stream: ByteStream | None) -> None:
    """Close a stream the race will not use, without waiting (also from a cancelled task)."""
    if stream is None:
        return

    async def close() -> None:
        with contextlib.suppress(Exception):
            await stream.close()

    _closing.spawn(close())


def technique(selected: str | None, inbound_via_mapping: bool,
              inbound_on_lan: bool = False) -> str:
    """How the path of the ``selected`` attempt got through, as ``overlay send --json``
    reports it (next to ``path``):

    - ``lan``: we dialled the peer's address on the LAN both share (``tcp-dial-lan-N``), or
      the peer's connection reached our listener from such an address (``inbound_on_lan``);
    - ``mapping``: we dialled the peer's router-mapped address, or the peer's connection
      reached our listener through our own mapping (``inbound_via_mapping``);
    - ``dial``: any other direct TCP connection (one side reachable, the other dialled);
    - ``simple``: UDP hole punching, both sides probing each other's candidates;
    - ``simultaneous-open``: TCP hole punching, both sides connecting from their listener's
      port at the same time (:mod:`overlay.media.tcp_punch`);
    - ``birthday``: UDP hole punching with one symmetric side: its extra sockets against the
      other side's random-port probes (:mod:`overlay.media.birthday`);
    - ``relay``: through a supernode's relay;
    - ``unknown``: nothing was selected.
    """
    if selected is None:
        return "unknown"
    if selected.startswith("relay"):
        return "relay"
    if selected.startswith("tcp-dial-lan") or (selected == "tcp-accept" and inbound_on_lan):
        return "lan"
    if selected == "udp-punch":
        return "simple"
    if selected.startswith("tcp-punch"):
        return "simultaneous-open"
    if selected == "udp-birthday":
        return "birthday"
    if selected.startswith("tcp-dial-mapped") or (selected == "tcp-accept"
                                                  and inbound_via_mapping):
        return "mapping"
    return "dial"


class NoPath(MediaError):
    """No path completed an authenticated handshake in time; ``timeline`` is the race's."""

    def __init__(self, message: str, timeline: Timeline | None = None) -> None:
        super().__init__(message)
        self.timeline = timeline


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)
    #: the attempt whose path was selected
    selected: str | None = None

    def add(self, event: str) -> None:
        self.events.append((round(time.monotonic() - self.started, 4), event))


class MediaListener:
    """A client's TCP listener for direct connections; routes each incoming connection to
    the session whose id it starts with."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.waiting: dict[bytes, asyncio.Queue[TcpByteStream]] = {}

    async def start(self, host: str, port: int = 0) -> None:
        # SO_REUSEPORT: TCP hole punching connects from this port while it listens
        # (:mod:`overlay.media.tcp_punch_io`); Linux allows that only to the same user
        self.server = await asyncio.start_server(self._accept, host, port, reuse_port=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                session_id = await reader.readexactly(16)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        queue = self.waiting.get(session_id)
        if queue is None:
            writer.close()  # not a session we expect: drop without a word
            return
        queue.put_nowait(TcpByteStream(reader, writer))

    def expect(self, session_id: bytes) -> asyncio.Queue[TcpByteStream]:
        return self.waiting.setdefault(session_id, asyncio.Queue())

    def forget(self, session_id: bytes) -> None:
        self.waiting.pop(session_id, None)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


async def dial_tcp(host: str, port: int, session_id: bytes) -> TcpByteStream:
    async with asyncio.timeout(TCP_CONNECT_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, port)
    writer.write(session_id)
    return TcpByteStream(reader, writer)


def is_relay(name: str) -> bool:
    return name.startswith("relay")


async def _first_of(
    attempts: dict[str, Attempt], securer: Securer, timeline: Timeline,
    staggers: dict[str, float], timeout: float, prefer_direct_s: float = 0.0,
) -> tuple[dict[str, MediaStream], dict[str, str]]:
    """Run attempts (each delayed by its stagger); return the ones that completed the
    handshake so far once the first does (when only relays did and ``prefer_direct_s`` > 0,
    once a direct one does too or that long after), plus the errors of those that failed."""
    completed: dict[str, MediaStream] = {}
    errors: dict[str, str] = {}
    first = asyncio.Event()
    direct = asyncio.Event()

    async def run(name: str, attempt: Attempt) -> None:
        await asyncio.sleep(stagger_for(name, staggers))
        if first.is_set():
            return
        timeline.add(f"{name}: start")
        raw: MediaStream | None = None
        try:
            raw = await attempt()
            timeline.add(f"{name}: connected")
            secured = await securer(raw)
        except Exception as exc:  # each path fails for its own reasons; keep them all
            errors[name] = str(exc) or type(exc).__name__
            timeline.add(f"{name}: failed ({errors[name]})")
            close_later(raw)
            return
        except BaseException:  # lost the race: release what it holds (a relay reservation)
            close_later(raw)
            raise
        timeline.add(f"{name}: authenticated")
        completed[name] = secured
        first.set()
        if not is_relay(name):
            direct.set()

    tasks = [asyncio.create_task(run(n, a)) for n, a in attempts.items()]
    waiter = asyncio.create_task(first.wait())
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            while not first.is_set() and not all(t.done() for t in tasks):
                await asyncio.wait([waiter, *[t for t in tasks if not t.done()]],
                                   return_when=asyncio.FIRST_COMPLETED)
        if prefer_direct_s > 0 and first.is_set():
            await _wait_for_direct(attempts, tasks, direct, prefer_direct_s, timeline)
    except TimeoutError:
        pass
    finally:
        waiter.cancel()
        _stop_losers(tasks)
    return completed, errors


async def _wait_for_direct(attempts: dict[str, Attempt], tasks: list[asyncio.Task[None]],
                           direct: asyncio.Event, wait_s: float, timeline: Timeline) -> None:
    """Only relays authenticated: wait up to ``wait_s`` while direct attempts still run."""
    direct_tasks = [t for n, t in zip(attempts, tasks, strict=True) if not is_relay(n)]
    deadline = asyncio.get_running_loop().time() + wait_s
    if direct.is_set() or all(t.done() for t in direct_tasks):
        return
    timeline.add("waiting for a direct path")
    preferred = asyncio.ensure_future(direct.wait())
    try:
        while not direct.is_set() and not all(t.done() for t in direct_tasks):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait([preferred, *[t for t in direct_tasks if not t.done()]],
                               timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        preferred.cancel()


def _stop_losers(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the attempts still running, without waiting for them: the selected path
    must not wait for a losing one to wind down (a QUIC close at 400 ms RTT took up to
    ~0.9 s). A cancelled attempt adds nothing to the race's results and closes what it
    holds itself (:func:`close_later`)."""
    for task in tasks:
        if not task.done():
            task.cancel()
    _closing.spawn(asyncio.gather(*tasks, return_exceptions=True))


async def connect_as_initiator(
    attempts: dict[str, Attempt], securer: Securer, timeout: float = 12.0,
    staggers: dict[str, float] | None = None, log: FilteringBoundLogger = log,
    prefer_direct_s: float = 0.0,
) -> tuple[MediaStream, Timeline]:
    """Race the attempts, select the first path that authenticated, close the others.
    With ``prefer_direct_s``, a direct path that authenticates within that long after a
    relay did is selected instead. ``log`` is the caller's logger, bound to its session."""
    timeline = Timeline()
    completed, errors = await _first_of(
        attempts, securer, timeline,
        staggers or default_staggers(attempts), timeout, prefer_direct_s)
    if not completed:
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "timed out"
        log.info("path_selection", outcome="no path", timeline=timeline.events)
        raise NoPath(f"no path: {detail}", timeline)
    direct_done = [n for n in completed if not is_relay(n)]
    winner_name = min(direct_done if prefer_direct_s > 0 and direct_done else completed,
                      key=lambda n: next(t for t, e in timeline.events
                                         if e == f"{n}: authenticated"))
    winner = completed.pop(winner_name)
    await winner.send(SELECT)  # first: the peer waits for it; closing losers can take an RTT
    timeline.add(f"selected {winner_name}")
    timeline.selected = winner_name
    for loser in completed.values():
        close_later(loser)
    log.info("path_selection", outcome=winner_name, timeline=timeline.events)
    return winner, timeline


async def connect_as_responder(
    attempts: dict[str, Attempt], securer: Securer, timeout: float = 15.0,
    staggers: dict[str, float] | None = None, log: FilteringBoundLogger = log,
) -> tuple[MediaStream, Timeline]:
    """Complete whatever paths work, and use the one the initiator selects. ``log`` is the
    caller's logger, bound to its session."""
    timeline = Timeline()
    loop = asyncio.get_running_loop()
    selected: asyncio.Future[tuple[str, MediaStream]] = loop.create_future()
    errors: dict[str, str] = {}

    async def run(name: str, attempt: Attempt) -> None:
        await asyncio.sleep(stagger_for(name, staggers or default_staggers(attempts)))
        if selected.done():
            return
        timeline.add(f"{name}: start")
        raw: MediaStream | None = None
        try:
            raw = await attempt()
            stream = await securer(raw)
            raw = stream
            timeline.add(f"{name}: authenticated")
            first = b""
            while len(first) < len(SELECT):
                data = await stream.recv(65536)
                if not data:
                    break
                first += data
        except Exception as exc:
            errors[name] = str(exc) or type(exc).__name__
            timeline.add(f"{name}: failed ({errors[name]})")
            close_later(raw)
            return
        except BaseException:  # another path was selected: release this one
            close_later(raw)
            raise
        if first[: len(SELECT)] == SELECT and not selected.done():
            selected.set_result((name, Pushback(stream, first[len(SELECT):])))
        else:
            await stream.close()

    tasks = [asyncio.create_task(run(n, a)) for n, a in attempts.items()]
    try:
        async with asyncio.timeout(timeout):
            done: asyncio.Future[object] = asyncio.ensure_future(
                asyncio.gather(*tasks, return_exceptions=True))
            waiting: list[asyncio.Future[object]] = [selected, done]  # type: ignore[list-item]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        pass
    finally:  # also when the caller cancels us (its answer could not be delivered)
        _stop_losers(tasks)
    if not selected.done():
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "timed out"
        log.info("path_selection", outcome="no path", timeline=timeline.events)
        raise NoPath(f"no path: {detail}", timeline)
    name, stream = selected.result()
    timeline.add(f"selected {name}")
    timeline.selected = name
    log.info("path_selection", outcome=name, timeline=timeline.events)
    return stream, timeline

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

Relay first, upgrade later: given a :class:`LateDirect`, a race that selected a relay keeps
its direct attempts running for the plan's window; the first that completes is SELECTed by
the initiator too, and offered to whoever moves the transfer (:mod:`overlay.media.path_move`).
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
from overlay.media import selection
from overlay.media.errors import MediaError
from overlay.media.selection import KEEPALIVE, MIRROR, SELECT, read_selection
from overlay.media.stream import ByteStream, MediaStream
from overlay.media.techniques import (
    call_moves_to,
    is_direct_udp,
    is_relay,
    is_stream_carried,
    relay_index,
)

log = get_logger(__name__)

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
    """A MediaStream that first returns bytes already read from the one it wraps (``raw``
    too: what looks under a path for its transport, a call for QUIC's datagrams, finds it)."""

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


class LateDirect:
    """The attempts still running after a path was selected, for ``window_s`` (None: until
    :meth:`close`). For a file (``keep_relays`` False, a relay selected): the first direct
    path that completes (the initiator's: authenticated, then SELECTed by it; the
    responder's: SELECTed by the initiator) is the path to move to (:meth:`wait`). For a call
    (``keep_relays``): the initiator SELECTs a later path the call moves to
    (:func:`~overlay.media.techniques.call_moves_to`: off a relay to a direct path, off
    direct TCP to direct UDP); the others that complete, relays too, are spares, and the
    initiator SELECTs one when the path in use dies (:meth:`fail_over`), and until then sends
    a keepalive on each every ``keepalive_s`` (:mod:`overlay.media.selection`; default
    ``SPARE_KEEPALIVE_S``), so a relay does not end a spare session as idle; each path the
    peer or we SELECT later comes out of :meth:`next_path`. Closed by whoever opened the path
    (:meth:`close`: stops the attempts, closes the paths not taken)."""

    def __init__(self, window_s: float | None, keep_relays: bool = False,
                 keepalive_s: float | None = None) -> None:
        self.window_s = window_s
        self.keep_relays = keep_relays
        self.keepalive_s = selection.SPARE_KEEPALIVE_S if keepalive_s is None else keepalive_s
        #: keepalives and SELECTs on a spare one at a time: none follows its SELECT
        self._sending = asyncio.Lock()
        self._keepalive: asyncio.Task[None] | None = None
        #: set when the race selected and the other attempts kept running
        self.armed = False
        #: set when a direct path completed: :attr:`chosen`
        self.arrived = asyncio.Event()
        self.chosen: tuple[str, MediaStream] | None = None
        self._taken = False
        self._selected: asyncio.Queue[tuple[str, MediaStream]] = asyncio.Queue()
        #: the paths the peer made a call's mirror (the responder's)
        self._mirrored: asyncio.Queue[tuple[str, MediaStream]] = asyncio.Queue()
        #: set each time a spare is added (the initiator's call may mirror it)
        self.spare_added = asyncio.Event()
        #: set when a call's race selected a TCP stream: the relay attempts kept start now
        #: (the relay that becomes its mirror is wanted at once, not at its stagger)
        self.hurry = asyncio.Event()
        #: completed paths not selected (the initiator's, for a call)
        self.spares: list[tuple[str, MediaStream]] = []
        self._used: list[MediaStream] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ended = asyncio.Event()
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timeline: Timeline | None = None
        self._on_relay = False
        #: the attempt whose path is in use (the initiator's: selected, moved to, failed over)
        self._current = ""

    def wants(self, name: str, selected: str) -> bool:
        """Attempt ``name`` runs on once ``selected`` won: a direct one when a relay won (or
        for a call), another relay only for a call on a relay (its spare) or on a TCP
        stream (its spare and mirror, :meth:`mirror`: a call on direct UDP holds no relay
        session)."""
        if name == selected or not (self.keep_relays or is_relay(selected)):
            return False
        return not is_relay(name) or (self.keep_relays and (is_relay(selected)
                                                            or is_stream_carried(selected)))

    def add_spare(self, name: str, stream: MediaStream) -> None:
        """A completed path not selected (the initiator's): SELECTed if the path in use dies,
        or made the call's mirror."""
        self.spares.append((name, stream))
        self.spare_added.set()

    def arm(self, named: dict[str, asyncio.Task[None]], timeline: Timeline,
            selected: str) -> list[asyncio.Task[None]]:
        """Attempt ``selected`` won: the attempts :meth:`wants` run on for the window; the
        others are returned (to stop). Not armed when it wants none by kind."""
        keep = [t for n, t in named.items() if self.wants(n, selected)]
        others = [t for t in named.values() if t not in keep]
        if not (self.keep_relays or is_relay(selected)):
            return others
        self.armed = True
        if self.keep_relays and is_stream_carried(selected):
            self.hurry.set()
        if self.keep_relays and self._keepalive is None:
            self._keepalive = asyncio.ensure_future(self._keep_spares_alive())
        self._on_relay = is_relay(selected)
        self._current = selected
        self._timeline = timeline
        self._tasks = [t for t in keep if not t.done()]
        if not self._tasks:
            self._ended.set()
            return others
        timeline.add("other attempts run on")
        if self.window_s is not None:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._stop)
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        return others

    def keeps(self, name: str) -> bool:
        """Attempt ``name`` runs on after the selection (once armed)."""
        return self.armed and any(t.get_name() == name for t in self._tasks)

    def kept(self, task: asyncio.Task[None]) -> bool:
        return task in self._tasks

    def _task_done(self, _: asyncio.Task[None]) -> None:
        if all(t.done() for t in self._tasks):
            self._ended.set()

    async def offer(self, name: str, stream: MediaStream, select: bool) -> None:
        """Attempt ``name`` completed after the selection (``select``: we are the initiator;
        the responder offers only paths the initiator SELECTed)."""
        if self._closed or (not self.keep_relays and (self.chosen is not None
                                                      or self._ended.is_set())):
            close_later(stream)
            return
        if select and is_relay(name) and not self._spare_relay_wanted(name):
            close_later(stream)
            return
        if select and not self._moves_to(name):
            self.add_spare(name, stream)  # a call's spare: SELECTed when needed
            return
        if select and not await self._select(name, stream):
            return
        self._current = name
        if self.chosen is None:
            self.chosen = (name, stream)
            self.arrived.set()
        self._selected.put_nowait((name, stream))
        if self._timeline is not None:
            self._timeline.add(f"upgrade: {name}")
        if not self.keep_relays:
            self._stop()

    def _moves_to(self, name: str) -> bool:
        """The initiator's late path ``name`` is SELECTed at once (not kept as a spare)."""
        if self.keep_relays:
            return call_moves_to(self._current, name)
        return not is_relay(name) and self._on_relay and self.chosen is None

    def _spare_relay_wanted(self, name: str) -> bool:
        """A call holds at most one spare relay session (each reserves budget at a relay,
        the network's scarce resource), and only at another supernode than the one carrying
        it: a spare at the same supernode dies with it."""
        index = relay_index(name)
        return (index is not None and index != relay_index(self._current)
                and not any(is_relay(n) for n, _ in self.spares))

    async def _select(self, name: str, stream: MediaStream) -> bool:
        try:
            async with self._sending:
                await stream.send(SELECT)
        except Exception:  # the path broke at once: not one to move to
            close_later(stream)
            return False
        return True

    async def _keep_spares_alive(self) -> None:
        """Every ``keepalive_s``, a keepalive on each spare still held (one that fails is
        dropped: no path to fail over to)."""
        while not self._closed:
            await asyncio.sleep(self.keepalive_s)
            for spare in list(self.spares):
                async with self._sending:
                    if spare not in self.spares:  # SELECTed meanwhile
                        continue
                    try:
                        await spare[1].send(KEEPALIVE)
                    except Exception:
                        self.spares.remove(spare)
                        close_later(spare[1])

    async def mirror(self) -> tuple[str, MediaStream] | None:
        """The initiator's call on a TCP stream: make a spare relay path (at another supernode
        than the one carrying the call, if any) its mirror: ``MIRROR`` on it, and the peer
        sends a copy of each frame on it too (None: no such spare works)."""
        if not is_stream_carried(self._current):
            return None
        for spare in list(self.spares):
            name, stream = spare
            if not is_relay(name) or relay_index(name) == relay_index(self._current):
                continue
            self.spares.remove(spare)
            try:
                async with self._sending:
                    await stream.send(MIRROR)
            except Exception:
                close_later(stream)
                continue
            self._used.append(stream)
            if self._timeline is not None:
                self._timeline.add(f"mirror: {name}")
            return spare
        return None

    def offer_mirror(self, name: str, stream: MediaStream) -> None:
        """The responder: the initiator made the path of attempt ``name`` the call's mirror."""
        if self._closed:
            close_later(stream)
            return
        self._used.append(stream)
        self._mirrored.put_nowait((name, stream))

    async def next_mirror(self) -> tuple[str, MediaStream]:
        """The next path the initiator made the call's mirror (the responder's)."""
        return await self._mirrored.get()

    async def fail_over(self) -> tuple[str, MediaStream] | None:
        """The initiator's path in use died: SELECT a spare that still works (None: none)."""
        while self.spares:
            name, stream = self.spares.pop(0)
            if await self._select(name, stream):
                self._current = name
                if self._timeline is not None:
                    self._timeline.add(f"fail over: {name}")
                self._used.append(stream)
                return name, stream
        return None

    async def next_path(self) -> tuple[str, MediaStream]:
        """The next path SELECTed after the race (a call moves to it)."""
        chosen = await self._selected.get()
        self._used.append(chosen[1])
        return chosen

    def _stop(self) -> None:
        """The window is over or a path was chosen: stop the attempts still running."""
        if self._timer is not None:
            self._timer.cancel()
        self._ended.set()
        current = asyncio.current_task()
        _stop_losers([t for t in self._tasks if t is not current])

    async def wait(self) -> tuple[str, MediaStream] | None:
        """The direct path to move to, once one completed; None when none did in time."""
        if not self.armed:
            return None
        waits = [asyncio.ensure_future(e.wait()) for e in (self.arrived, self._ended)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self.chosen

    def take(self) -> None:
        """The chosen path is in use: :meth:`close` leaves it open."""
        self._taken = True

    def close(self) -> None:
        self._closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._stop()
        if self.chosen is not None and not self._taken and self.chosen[1] not in self._used:
            close_later(self.chosen[1])
        for _, stream in self.spares:
            close_later(stream)
        self.spares.clear()
        chosen = self.chosen[1] if self.chosen is not None else None
        while not self._selected.empty():
            stream = self._selected.get_nowait()[1]
            if stream is not chosen and stream not in self._used:
                close_later(stream)
        for stream in self._used:
            close_later(stream)


async def _first_of(
    attempts: dict[str, Attempt], securer: Securer, timeline: Timeline,
    staggers: dict[str, float], timeout: float, prefer_direct_s: float = 0.0,
    late: LateDirect | None = None, prefer_udp_s: float = 0.0,
) -> tuple[dict[str, MediaStream], dict[str, str], list[asyncio.Task[None]]]:
    """Run attempts (each delayed by its stagger); return the ones that completed the
    handshake so far once the first does (when only relays did and ``prefer_direct_s`` > 0,
    once a direct one does too or that long after; then with ``prefer_udp_s`` > 0 and no
    direct UDP one yet, once one does or that long after), the errors of those that failed, the
    attempts' tasks (stopped, unless ``late`` is given: then the caller stops them). A direct
    attempt that completes once ``late`` is armed goes to it."""
    completed: dict[str, MediaStream] = {}
    errors: dict[str, str] = {}
    first = asyncio.Event()
    direct = asyncio.Event()
    udp = asyncio.Event()

    async def run(name: str, attempt: Attempt) -> None:
        await _start_delay(stagger_for(name, staggers), late if is_relay(name) else None)
        awaited = prefer_udp_s > 0 and is_direct_udp(name)  # the race may wait for it
        if first.is_set() and not (awaited or (late is not None and late.keeps(name))):
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
        if late is not None and late.armed:
            await late.offer(name, secured, select=True)
            return
        completed[name] = secured
        first.set()
        if not is_relay(name):
            direct.set()
        if is_direct_udp(name):
            udp.set()

    tasks = [asyncio.create_task(run(n, a), name=n) for n, a in attempts.items()]
    waiter = asyncio.create_task(first.wait())
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            while not first.is_set() and not all(t.done() for t in tasks):
                await asyncio.wait([waiter, *[t for t in tasks if not t.done()]],
                                   return_when=asyncio.FIRST_COMPLETED)
        if prefer_direct_s > 0 and first.is_set():
            await _wait_for(attempts, tasks, lambda n: not is_relay(n), direct,
                            prefer_direct_s, timeline, "a direct path")
        if prefer_udp_s > 0 and first.is_set():
            await _wait_for(attempts, tasks, is_direct_udp, udp, prefer_udp_s, timeline,
                            "a direct UDP path")
    except TimeoutError:
        pass
    except BaseException:
        _stop_losers(tasks)
        raise
    finally:
        waiter.cancel()
    if late is None:
        _stop_losers(tasks)
    return completed, errors, tasks


async def _wait_for(attempts: dict[str, Attempt], tasks: list[asyncio.Task[None]],
                    kind: Callable[[str], bool], done: asyncio.Event, wait_s: float,
                    timeline: Timeline, what: str) -> None:
    """None of the attempts of this ``kind`` authenticated (``done`` unset): wait up to
    ``wait_s`` while some still run."""
    kind_tasks = [t for n, t in zip(attempts, tasks, strict=True) if kind(n)]
    deadline = asyncio.get_running_loop().time() + wait_s
    if done.is_set() or all(t.done() for t in kind_tasks):
        return
    timeline.add(f"waiting for {what}")
    preferred = asyncio.ensure_future(done.wait())
    try:
        while not done.is_set() and not all(t.done() for t in kind_tasks):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait([preferred, *[t for t in kind_tasks if not t.done()]],
                               timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        preferred.cancel()


async def _start_delay(delay: float, late: LateDirect | None) -> None:
    """An attempt's stagger, cut short when ``late`` (given for relay attempts) hurries."""
    if late is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(late.hurry.wait(), delay)


def _earliest(names: dict[str, MediaStream] | list[str], timeline: Timeline) -> str:
    """Of these completed attempts, the one that authenticated first."""
    return min(names, key=lambda n: next(t for t, e in timeline.events
                                         if e == f"{n}: authenticated"))


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
    prefer_direct_s: float = 0.0, late: LateDirect | None = None, prefer_udp_s: float = 0.0,
) -> tuple[MediaStream, Timeline]:
    """Race the attempts, select the first path that authenticated, close the others.
    With ``prefer_direct_s``, a direct path that authenticates within that long after a
    relay did is selected instead; with ``prefer_udp_s`` (a call's), a direct UDP path that
    authenticates within that long after that. With ``late``, a selected relay leaves the
    direct attempts running (:class:`LateDirect`). ``log`` is the caller's logger, bound to
    its session."""
    timeline = Timeline()
    completed, errors, tasks = await _first_of(
        attempts, securer, timeline,
        staggers or default_staggers(attempts), timeout, prefer_direct_s, late, prefer_udp_s)
    if not completed:
        _stop_losers(tasks)
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "timed out"
        log.info("path_selection", outcome="no path", timeline=timeline.events)
        raise NoPath(f"no path: {detail}", timeline)
    udp_done = [n for n in completed if is_direct_udp(n)]
    direct_done = [n for n in completed if not is_relay(n)]
    winner_name = _earliest(udp_done if prefer_udp_s > 0 and udp_done else
                            direct_done if prefer_direct_s > 0 and direct_done else completed,
                            timeline)
    winner = completed.pop(winner_name)
    if late is not None:
        _stop_losers(late.arm(dict(zip(attempts, tasks, strict=True)), timeline, winner_name))
    await winner.send(SELECT)  # first: the peer waits for it; closing losers can take an RTT
    timeline.add(f"selected {winner_name}")
    timeline.selected = winner_name
    for name, loser in completed.items():  # a call on direct UDP holds no relay session
        if late is not None and late.keep_relays and late.wants(name, winner_name):
            late.add_spare(name, loser)
        else:
            close_later(loser)
    log.info("path_selection", outcome=winner_name, timeline=timeline.events)
    return winner, timeline


async def connect_as_responder(
    attempts: dict[str, Attempt], securer: Securer, timeout: float = 15.0,
    staggers: dict[str, float] | None = None, log: FilteringBoundLogger = log,
    late: LateDirect | None = None,
) -> tuple[MediaStream, Timeline]:
    """Complete whatever paths work, and use the one the initiator selects. With ``late``, a
    selected relay leaves the direct attempts running (:class:`LateDirect`). ``log`` is the
    caller's logger, bound to its session."""
    timeline = Timeline()
    loop = asyncio.get_running_loop()
    selected: asyncio.Future[tuple[str, MediaStream]] = loop.create_future()
    errors: dict[str, str] = {}

    async def run(name: str, attempt: Attempt) -> None:
        await _start_delay(stagger_for(name, staggers or default_staggers(attempts)),
                           late if is_relay(name) else None)
        if selected.done() and not (late is not None and late.keeps(name)):
            return
        timeline.add(f"{name}: start")
        raw: MediaStream | None = None
        try:
            raw = await attempt()
            stream = await securer(raw)
            raw = stream
            timeline.add(f"{name}: authenticated")
            first = read_selection(b"")
            while first.state == "more":  # keepalives before SELECT (a spare) are dropped
                data = await stream.recv(65536)
                if not data:
                    break
                first = read_selection(first.rest + data)
        except Exception as exc:
            errors[name] = str(exc) or type(exc).__name__
            timeline.add(f"{name}: failed ({errors[name]})")
            close_later(raw)
            return
        except BaseException:  # another path was selected: release this one
            close_later(raw)
            raise
        chosen = first.state == "selected"
        if chosen and not selected.done():
            selected.set_result((name, Pushback(stream, first.rest)))
            if late is not None:  # what it does not keep is stopped below
                late.arm(dict(zip(attempts, tasks, strict=True)), timeline, name)
        elif chosen and late is not None and late.keeps(name):
            await late.offer(name, Pushback(stream, first.rest), select=False)
        elif first.state == "mirrored" and late is not None and late.keeps(name):
            late.offer_mirror(name, Pushback(stream, first.rest))
        else:
            await stream.close()

    tasks = [asyncio.create_task(run(n, a), name=n) for n, a in attempts.items()]
    try:
        async with asyncio.timeout(timeout):
            done: asyncio.Future[object] = asyncio.ensure_future(
                asyncio.gather(*tasks, return_exceptions=True))
            waiting: list[asyncio.Future[object]] = [selected, done]  # type: ignore[list-item]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        pass
    finally:  # also when the caller cancels us (its answer could not be delivered)
        if late is not None and late.armed:  # the attempts kept are late's now
            _stop_losers([t for t in tasks if not late.kept(t)])
        else:
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

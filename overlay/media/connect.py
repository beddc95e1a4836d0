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
other side uses the path on which ``SELECT`` arrives. A decision timeline is logged. A 0-RTT
path (a file's punched QUIC path, :mod:`overlay.media.quic`) completes at the initiator as
soon as its first flight is out (``NAME: 0-RTT sent``): its ``SELECT`` and first bytes ride
that flight, and the peer's confirmation is checked as it arrives; if it never does, the path
fails under the transfer, which resumes in a new session.

Relay first, upgrade later: given a :class:`~overlay.media.late_paths.LateDirect`, a race
that selected a relay keeps its direct attempts running for the plan's window; the first that
completes is SELECTed by the initiator too, and offered to whoever moves the transfer
(:mod:`overlay.media.path_move`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from overlay.core.logs import get_logger
from overlay.media.errors import MediaError
from overlay.media.secure_stream import SecureByteStream
from overlay.media.selection import SELECT, read_selection
from overlay.media.stream import (
    MediaStream,
    discard,
    discard_later,
    unawaited_closes,
)
from overlay.media.techniques import is_direct_udp, is_relay, relay_elsewhere

log = get_logger(__name__)

#: a 0-RTT path's completion in the timeline (see :func:`completion`)
ZERO_RTT_SENT = "0-RTT sent"
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

    async def discard(self) -> None:
        await discard(self.raw)


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


class LatePaths(Protocol):
    """What a race asks of the paths kept running after its selection (implemented by
    :class:`overlay.media.late_paths.LateDirect`)."""

    armed: bool
    keep_relays: bool
    hurry: asyncio.Event

    def wants(self, name: str, selected: str) -> bool: ...

    def spare_wanted(self, name: str) -> bool: ...

    def add_spare(self, name: str, stream: MediaStream) -> None: ...

    def arm(self, named: dict[str, asyncio.Task[None]], timeline: Timeline,
            selected: str) -> list[asyncio.Task[None]]: ...

    def keeps(self, name: str) -> bool: ...

    def kept(self, task: asyncio.Task[None]) -> bool: ...

    async def offer(self, name: str, stream: MediaStream, select: bool) -> None: ...

    def offer_mirror(self, name: str, stream: MediaStream) -> None: ...


async def _first_of(
    attempts: dict[str, Attempt], securer: Securer, timeline: Timeline,
    staggers: dict[str, float], timeout: float, prefer_direct_s: float = 0.0,
    late: LatePaths | None = None, prefer_udp_s: float = 0.0,
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
            discard_later(raw)
            return
        except BaseException:  # lost the race: release what it holds (a relay reservation)
            discard_later(raw)
            raise
        timeline.add(f"{name}: {completion(secured)}")
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
        stop_losers(tasks)
        raise
    finally:
        waiter.cancel()
    if late is None:
        stop_losers(tasks)
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


async def _start_delay(delay: float, late: LatePaths | None) -> None:
    """An attempt's stagger, cut short when ``late`` (given for relay attempts) hurries."""
    if late is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(late.hurry.wait(), delay)


def completion(secured: MediaStream) -> str:
    """How an attempt completed, for the timeline: ``authenticated``, or (a 0-RTT path, whose
    caller writes before the callee's confirmation arrives: checked as it does)
    :data:`ZERO_RTT_SENT`."""
    if isinstance(secured, SecureByteStream) and not secured.framer.confirmed:
        return ZERO_RTT_SENT
    return "authenticated"


def _earliest(names: dict[str, MediaStream] | list[str], timeline: Timeline) -> str:
    """Of these completed attempts, the one that completed first."""
    return min(names, key=lambda n: next(t for t, e in timeline.events
                                         if e in (f"{n}: authenticated",
                                                  f"{n}: {ZERO_RTT_SENT}")))


def stop_losers(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the attempts still running, without waiting for them: the selected path
    must not wait for a losing one to wind down (a QUIC close at 400 ms RTT took up to
    ~0.9 s). A cancelled attempt adds nothing to the race's results and closes what it
    holds itself (:func:`discard_later`)."""
    for task in tasks:
        if not task.done():
            task.cancel()
    unawaited_closes.spawn(asyncio.gather(*tasks, return_exceptions=True))


async def connect_as_initiator(
    attempts: dict[str, Attempt], securer: Securer, timeout: float = 12.0,
    staggers: dict[str, float] | None = None, log: FilteringBoundLogger = log,
    prefer_direct_s: float = 0.0, late: LatePaths | None = None, prefer_udp_s: float = 0.0,
) -> tuple[MediaStream, Timeline]:
    """Race the attempts, select the first path that authenticated, close the others; a
    direct path that authenticated by the time the race selects is taken over a relay that
    did first. With ``prefer_direct_s``, a direct path that authenticates within that long
    after a relay did is selected instead; with ``prefer_udp_s`` (a call's), a direct UDP path that
    authenticates within that long after that. With ``late``, a selected relay leaves the
    direct attempts running (:class:`~overlay.media.late_paths.LateDirect`). ``log`` is the
    caller's logger, bound to its session."""
    timeline = Timeline()
    completed, errors, tasks = await _first_of(
        attempts, securer, timeline,
        staggers or default_staggers(attempts), timeout, prefer_direct_s, late, prefer_udp_s)
    if not completed:
        stop_losers(tasks)
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "timed out"
        log.info("path_selection", outcome="no path", timeline=timeline.events)
        raise NoPath(f"no path: {detail}", timeline)
    udp_done = [n for n in completed if is_direct_udp(n)]
    direct_done = [n for n in completed if not is_relay(n)]
    # a direct path that authenticated by now wins over a relay that did first (it costs the
    # network nothing; a file would otherwise close it and wait for another to move to)
    winner_name = _earliest(udp_done if prefer_udp_s > 0 and udp_done else
                            direct_done or completed, timeline)
    winner = completed.pop(winner_name)
    if late is not None:
        stop_losers(late.arm(dict(zip(attempts, tasks, strict=True)), timeline, winner_name))
    await winner.send(SELECT)  # first: the peer waits for it; closing losers can take an RTT
    timeline.add(f"selected {winner_name}")
    timeline.selected = winner_name
    for name, loser in completed.items():  # a call on direct UDP holds no relay session
        if late is not None and late.keep_relays and late.wants(name, winner_name) \
                and late.spare_wanted(name):
            late.add_spare(name, loser)
        else:
            discard_later(loser)
    log.info("path_selection", outcome=winner_name, timeline=timeline.events)
    return winner, timeline


async def connect_as_responder(
    attempts: dict[str, Attempt], securer: Securer, timeout: float = 15.0,
    staggers: dict[str, float] | None = None, log: FilteringBoundLogger = log,
    late: LatePaths | None = None, peer_holds_spare: asyncio.Event | None = None,
) -> tuple[MediaStream, Timeline]:
    """Complete whatever paths work, and use the one the initiator selects. With ``late``, a
    selected relay leaves the direct attempts running
    (:class:`~overlay.media.late_paths.LateDirect`). ``log`` is the caller's logger, bound to
    its session. ``peer_holds_spare`` is set once a relay path at another supernode than the
    selected path's has completed besides it: the initiator's one spare relay session (it
    keeps at most one, and stops its other relay attempts then), so our relay attempts not
    paired yet, given this event, stop rather than ask their relays again for 8 s."""
    timeline = Timeline()
    loop = asyncio.get_running_loop()
    selected: asyncio.Future[tuple[str, MediaStream]] = loop.create_future()
    errors: dict[str, str] = {}
    #: the relay attempts whose paths completed
    relays_done: set[str] = set()

    def spare_check() -> None:
        if peer_holds_spare is None or not selected.done():
            return
        current = selected.result()[0]
        if any(relay_elsewhere(name, current) for name in relays_done):
            peer_holds_spare.set()

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
            if is_relay(name):
                relays_done.add(name)
                spare_check()
            first = read_selection(b"")
            while first.state == "more":  # keepalives before SELECT (a spare) are dropped
                data = await stream.recv(65536)
                if not data:
                    break
                first = read_selection(first.rest + data)
            if first.state == "mirrored" and late is not None and not selected.done():
                # the caller marks its mirror right after its SELECT on the path in use, but
                # on another path (another relay): the mark can come first. Decide once the
                # SELECT has (the race arms ``late`` then; none at all: the race cancels us)
                await asyncio.wait([selected])
        except Exception as exc:
            errors[name] = str(exc) or type(exc).__name__
            timeline.add(f"{name}: failed ({errors[name]})")
            discard_later(raw)
            return
        except BaseException:  # another path was selected: release this one
            discard_later(raw)
            raise
        chosen = first.state == "selected"
        if chosen and not selected.done():
            selected.set_result((name, Pushback(stream, first.rest)))
            spare_check()
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
            stop_losers([t for t in tasks if not late.kept(t)])
        else:
            stop_losers(tasks)
    if not selected.done():
        detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or "timed out"
        log.info("path_selection", outcome="no path", timeline=timeline.events)
        raise NoPath(f"no path: {detail}", timeline)
    name, stream = selected.result()
    timeline.add(f"selected {name}")
    timeline.selected = name
    log.info("path_selection", outcome=name, timeline=timeline.events)
    return stream, timeline

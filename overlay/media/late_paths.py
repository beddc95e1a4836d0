"""The paths of a race still running after its selection (:class:`LateDirect`): a file's
direct attempts after a relay won (the first that completes is the path to move to), a
call's later paths (an upgrade it moves to), spares (SELECTed when the path in use dies),
the mirror of a call on a TCP stream, and the keepalives on spares (:mod:`.selection`).
The race itself is :mod:`.connect`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from overlay.media import selection
from overlay.media.connect import Timeline, stop_losers
from overlay.media.selection import KEEPALIVE, MIRROR, SELECT
from overlay.media.stream import MediaStream, close_later, discard_later
from overlay.media.techniques import (
    call_moves_to,
    file_moves_to,
    is_direct_udp,
    is_relay,
    is_stream_carried,
    relay_elsewhere,
)


class LateDirect:
    """The attempts still running after a path was selected, for ``window_s`` (None: until
    :meth:`close`). For a file (``keep_relays`` False, a relay selected; or, with
    ``from_udp``, a direct UDP path: its direct TCP attempts run on): the first path it
    moves to (:func:`~overlay.media.techniques.file_moves_to`) that completes (the
    initiator's: authenticated, then SELECTed by it; the responder's: SELECTed by the
    initiator) is the path to move to (:meth:`wait`). For a call
    (``keep_relays``): the initiator SELECTs a later path the call moves to
    (:func:`~overlay.media.techniques.call_moves_to`: off a relay to a direct path, off
    direct TCP to direct UDP); the others that complete, relays too, are spares, and the
    initiator SELECTs one when the path in use dies (:meth:`fail_over`), and until then sends
    a keepalive on each every ``keepalive_s`` (:mod:`overlay.media.selection`; default
    ``SPARE_KEEPALIVE_S``), so a relay does not end a spare session as idle; each path the
    peer or we SELECT later comes out of :meth:`next_path`. Closed by whoever opened the path
    (:meth:`close`: stops the attempts, closes the paths not taken)."""

    def __init__(self, window_s: float | None, keep_relays: bool = False,
                 keepalive_s: float | None = None, from_udp: bool = False) -> None:
        self.window_s = window_s
        self.keep_relays = keep_relays
        #: a file's transfer selected on a direct UDP path may move to a direct TCP one
        #: (UDP first, upgrade to TCP: :func:`overlay.media.direct_paths.plan`)
        self.from_udp = from_udp
        #: a file's: whether its transfer, now on the path of the attempt given, still moves
        #: (set by the mover, :class:`~overlay.media.path_move.Moving`)
        self.still_moves: Callable[[str], bool] = lambda _current: True
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
        #: the attempt whose path is in use (the initiator's: selected, moved to, failed over)
        self._current = ""

    def upgrades(self, selected: str) -> bool:
        """Whether paths completed after ``selected`` won can still take over (or, for a
        call, be its spares)."""
        return self.keep_relays or is_relay(selected) or (self.from_udp
                                                          and is_direct_udp(selected))

    def wants(self, name: str, selected: str) -> bool:
        """Attempt ``name`` runs on once ``selected`` won: for a file, one it would move to
        (a direct one when a relay won; with ``from_udp``, a direct TCP one when direct UDP
        won); for a call, a direct one, and another relay only on a relay (its spare) or on
        a TCP stream (its spare and mirror, :meth:`mirror`: a call on direct UDP holds no
        relay session)."""
        if name == selected or not self.upgrades(selected):
            return False
        if not self.keep_relays:
            return file_moves_to(selected, name)
        return not is_relay(name) or is_relay(selected) or is_stream_carried(selected)

    def add_spare(self, name: str, stream: MediaStream) -> None:
        """A completed path not selected (the initiator's): SELECTed if the path in use dies,
        or made the call's mirror. A relay's is the one spare relay a call holds
        (:meth:`spare_wanted`): the relay attempts still running stop now, and
        release what they reserved, not when they complete (each holds budget at a relay)."""
        self.spares.append((name, stream))
        self.spare_added.set()
        if is_relay(name):
            current = asyncio.current_task()
            stop_losers([t for t in self._tasks
                         if is_relay(t.get_name()) and not t.done() and t is not current])

    def arm(self, named: dict[str, asyncio.Task[None]], timeline: Timeline,
            selected: str) -> list[asyncio.Task[None]]:
        """Attempt ``selected`` won: the attempts :meth:`wants` run on for the window; the
        others are returned (to stop). Not armed when it wants none by kind."""
        keep = [t for n, t in named.items() if self.wants(n, selected)]
        others = [t for t in named.values() if t not in keep]
        if not self.upgrades(selected):
            return others
        self.armed = True
        if self.keep_relays and is_stream_carried(selected):
            self.hurry.set()
        if self.keep_relays and self._keepalive is None:
            self._keepalive = asyncio.ensure_future(self._keep_spares_alive())
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
            discard_later(stream)
            return
        if select and not self.spare_wanted(name):
            discard_later(stream)
            return
        if select and not self._moves_to(name):
            if not self.keep_relays:  # a file that no longer moves: nothing to keep
                discard_later(stream)
                self._stop()
                return
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
        return self.chosen is None and file_moves_to(self._current, name) \
            and self.still_moves(self._current)

    def spare_wanted(self, name: str) -> bool:
        """The initiator keeps the completed path of attempt ``name`` (once armed): any
        direct one, but at most one spare relay session (each reserves budget at a relay,
        the network's scarce resource), and only at another supernode than the one carrying
        the call: a spare at the same supernode dies with it."""
        if not is_relay(name):
            return True
        return (relay_elsewhere(name, self._current)
                and not any(is_relay(n) for n, _ in self.spares))

    async def _select(self, name: str, stream: MediaStream) -> bool:
        try:
            async with self._sending:
                await stream.send(SELECT)
        except Exception:  # the path broke at once: not one to move to
            discard_later(stream)
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
                        discard_later(spare[1])

    async def mirror(self) -> tuple[str, MediaStream] | None:
        """The initiator's call on a TCP stream: make a spare relay path (at another supernode
        than the one carrying the call, if any) its mirror: ``MIRROR`` on it, and the peer
        sends a copy of each frame on it too (None: no such spare works)."""
        if not is_stream_carried(self._current):
            return None
        for spare in list(self.spares):
            name, stream = spare
            if not relay_elsewhere(name, self._current):
                continue
            self.spares.remove(spare)
            try:
                async with self._sending:
                    await stream.send(MIRROR)
            except Exception:
                discard_later(stream)
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
        stop_losers([t for t in self._tasks if t is not current])

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
            discard_later(stream)
        self.spares.clear()
        chosen = self.chosen[1] if self.chosen is not None else None
        while not self._selected.empty():
            stream = self._selected.get_nowait()[1]
            if stream is not chosen and stream not in self._used:
                close_later(stream)
        for stream in self._used:
            close_later(stream)

"""Moving a file transfer from the relay it started on to a direct path that completed later
(relay first, upgrade later), or from a punched UDP path to a direct TCP one (UDP first,
upgrade to TCP); :class:`~overlay.media.late_paths.LateDirect` keeps the attempts it may
move to running, :mod:`.move_rules` decides ("the relay" below: the path the transfer
started on). The move is the transfer's own resume: the sender stops writing on the relay
(between frames), closes it, and sends the ``HEADER`` with the same transfer id on the
direct path; the receiver, whose relay read ended at a frame boundary, kept its partial file
and answers ``READY`` with the offset it holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from overlay.media import move_rules
from overlay.media.errors import PathLost
from overlay.media.inbox_limits import InboxGuard
from overlay.media.late_paths import LateDirect
from overlay.media.stream import MediaStream, close_later
from overlay.media.transfer import (
    PartialStore,
    TransferInterrupted,
    TransferResult,
    receive_file,
    send_file,
)


@dataclass
class Moving:
    """One side of a transfer that may move: the path it is on (:attr:`stream`, a relay
    until it moves) and, once it moved, the attempt that took over and the path it left."""

    stream: MediaStream
    late: LateDirect
    #: the direct attempt the transfer moved to ("udp-birthday", ...), once it did
    attempt: str | None = None
    #: the path the transfer left ("relay"), once it moved
    moved_from: str | None = None

    def _move(self, to: tuple[str, MediaStream]) -> None:
        left = self.stream
        self.late.take()
        self.attempt, self.stream = to
        self.moved_from = left.path
        # closed in the background: a sender's relay socket may hold a backlog the relay
        # forwards at its session's rate, and a graceful close waits for it to drain
        close_later(left)

    async def send(self, path: Path, progress: Callable[[int, int], None], transfer_id: bytes,
                   sha: str, first_attempt: bool) -> TransferResult:
        """Send ``path`` on the relay, moving to the direct path when one completes before
        all the data went out (:func:`.move_rules.sender_step`)."""
        size = path.stat().st_size  # noqa: ASYNC240 - one stat
        sent = [0]

        def update(done: int, total: int) -> None:
            sent[0] = done
            progress(done, total)

        sending = asyncio.ensure_future(send_file(self.stream, path, update, transfer_id, sha,
                                                  first_attempt=first_attempt))
        upgrade = asyncio.ensure_future(self.late.wait())
        # a later path is SELECTed (so the receiver moves) only while moving pays, or when
        # the path in use was lost
        self.late.still_moves = lambda current: sending.done() \
            or move_rules.worth_moving(current, size - sent[0])
        try:
            while True:
                await asyncio.wait([f for f in (sending, upgrade) if not f.done()],
                                   return_when=asyncio.FIRST_COMPLETED)
                step = move_rules.sender_step(_leg(sending), _upgrade(upgrade),
                                              sent[0] >= size)
                if step == "finish":
                    return sending.result()
                if step == "move":
                    break
            sending.cancel()
            with contextlib.suppress(BaseException):
                await sending
            chosen = upgrade.result()
            assert chosen is not None
            self._move(chosen)
        finally:
            sending.cancel()
            upgrade.cancel()
        return await send_file(self.stream, path, update, transfer_id, sha)

    async def receive(self, inbox: Path, partials: PartialStore, sender: str,
                      guard: InboxGuard) -> TransferResult:
        """Receive a file on the relay, then on the direct path if it moves (the relay read
        stops at a frame boundary once the upgrade arrived)."""
        try:
            return await receive_file(self.stream, inbox, partials=partials, sender=sender,
                                      guard=guard, stop=self.late.arrived)
        except TransferInterrupted as exc:
            first_byte_at = exc.first_byte_at
            chosen = await self.late.wait()  # at once when it arrived; None when none did
            if chosen is None or move_rules.receiver_step("lost", "ready") != "move":
                raise
        self._move(chosen)
        done = await receive_file(self.stream, inbox, partials=partials, sender=sender,
                                  guard=guard)
        # the transfer's first byte is the first leg's, when it carried one
        return replace(done, first_byte_at=first_byte_at or done.first_byte_at)


def _leg(sending: asyncio.Future[TransferResult]) -> move_rules.Leg:
    if not sending.done():
        return "running"
    if not sending.cancelled() and isinstance(sending.exception(), PathLost):
        return "lost"
    return "done"


def _upgrade(upgrade: asyncio.Future[tuple[str, MediaStream] | None]) -> move_rules.Upgrade:
    if not upgrade.done():
        return "pending"
    return "ready" if upgrade.result() is not None else "none"

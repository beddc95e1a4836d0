"""A client's media service: sends files and answers invites, over the paths it races.

It puts together the parts that each do one job: :mod:`.paths` (our candidates, the direct
attempts, the race plan), :mod:`.relay_paths` (relay choice, relay attempts, reservation),
:mod:`.path_opening` (the caller: invite, answer, race) and :mod:`.callee` (invites delivered
to us: answered, kept as requests, or refused). This module sends a file over an opened path,
and resumes it on a new session when the path fails mid-transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from overlay.attach import SignalDelivery
from overlay.attach.adapter import ClientSession
from overlay.core import records
from overlay.core.logs import get_logger
from overlay.core.tasks import TaskSet
from overlay.core.user_ref import UserRef, parse_user_ref
from overlay.media import transport_hooks
from overlay.media.attachment import AttachmentPort, ContactsPort, OpenDoor
from overlay.media.callee import Callee
from overlay.media.connect_stats import ConnectStats
from overlay.media.consent import (
    ACCEPT_WAIT_S,
    MAX_ACCEPT_WAIT_S,
    NotAccepted,
    SendFailed,
)
from overlay.media.errors import PathLost
from overlay.media.inbox_limits import InboxGuard
from overlay.media.path_move import Moving
from overlay.media.path_opening import OpenedPath as OpenedPath
from overlay.media.path_opening import PathOpener, close_quietly
from overlay.media.paths import Paths
from overlay.media.relay_paths import RELAY_RATE_BPS, RelayPaths
from overlay.media.relay_selector import RelayHistory
from overlay.media.session import LostMidTransfer, MediaConfig, Session
from overlay.media.signalling import CALL as CALL
from overlay.media.signalling import FILE, Offer
from overlay.media.tcp_listener import MediaListener
from overlay.media.transfer import (
    PartialStore,
    TransferError,
    expire_interval,
    file_sha256,
    send_file,
)

log = get_logger(__name__)

MAX_SESSIONS_PER_SEND = 5
#: sessions a send may use in all, counting those a relay ended at its announced limit (a
#: large file through relays that allow 64 MiB per session needs one per 64 MiB)
MAX_RENEWED_SESSIONS = 256
RESUME_RETRY_PAUSE_S = 2.0


class MediaService:
    """Media for one client: ``config`` says who it is, ``attachment`` is its way to the
    supernodes (signalling, lookups, addresses), ``contacts`` its pins and consent policy
    (default :class:`OpenDoor`: no pins, anyone answered)."""

    def __init__(self, config: MediaConfig, attachment: AttachmentPort,
                 contacts: ContactsPort | None = None) -> None:
        self.config = config
        self.attachment = attachment
        self.contacts: ContactsPort = contacts or OpenDoor()
        self.sessions: dict[bytes, Session] = {}
        #: outgoing transfers in progress, for progress bars: {"to", "name", "sent", "size"}
        self.sending: list[dict[str, Any]] = []
        self._tasks = TaskSet()
        self.paths = Paths(config, attachment)
        self.relays = RelayPaths(attachment, self.paths)
        parts = (config, attachment, self.contacts, self.paths, self.relays, self.sessions,
                 self._tasks)
        self.opener = PathOpener(*parts)
        self.callee = Callee(*parts)

    # -- what the client reads and sets ---------------------------------------------------------

    @property
    def listener(self) -> MediaListener:
        return self.paths.listener

    @property
    def udp(self) -> transport_hooks.UdpState | None:
        return self.paths.udp

    @property
    def connect_stats(self) -> ConnectStats:
        """How path races turned out, per pair of NAT classes and kind of attempt."""
        return self.paths.connect_stats

    @property
    def relay_history(self) -> RelayHistory:
        return self.relays.history

    @property
    def transfers(self) -> list[dict[str, Any]]:
        """Recent incoming transfers."""
        return self.callee.transfers

    @property
    def partials(self) -> PartialStore:
        return self.callee.partials

    @property
    def inbox_guard(self) -> InboxGuard:
        return self.callee.inbox_guard

    @property
    def call_handler(self) -> Callable[[OpenedPath], Awaitable[None]] | None:
        """Runs an answered call over its path (set by the client; None: calls refused)."""
        return self.callee.call_handler

    @call_handler.setter
    def call_handler(self, handler: Callable[[OpenedPath], Awaitable[None]] | None) -> None:
        self.callee.call_handler = handler

    async def start(self) -> None:
        await self.paths.start()
        self._tasks.spawn(self._expire_partials())

    async def _expire_partials(self) -> None:
        """Remove the ``.partial`` files of transfers not resumed in time, on a timer (not
        only when another transfer arrives)."""
        while True:
            await asyncio.sleep(expire_interval())
            try:
                self.partials.expire()
            except OSError as exc:
                log.warning("partial_expiry_failed", error=str(exc))

    async def stop(self) -> None:
        self._tasks.cancel_all()
        await self.paths.stop()

    async def map_ports(self, session: ClientSession) -> None:
        await self.paths.map_ports(session)

    def port_mapping_status(self) -> dict[str, Any] | None:
        return self.paths.port_mapping_status()

    # -- signals ----------------------------------------------------------------------------------

    def on_signal(self, msg: SignalDelivery) -> bool:
        """Handle a delivered invite or answer; False when the payload is not ours."""
        return self.callee.on_signal(msg)

    def answer_request(self, invite: Offer) -> None:
        """The user accepted the request ``invite``: answer it (the caller may still wait)."""
        self.callee.answer_request(invite)

    def decline_request(self, invite: Offer) -> None:
        """The user declined the request ``invite``: answer "declined", with no address."""
        self.callee.decline_request(invite)

    def open_path(self, ref: UserRef, purpose: str, failed_relays: set[bytes],
                  accept_wait_s: float, progress: dict[str, Any] | None = None,
                  relay_rate_bps: int = RELAY_RATE_BPS, bitrate_bps: int = 0,
                  ) -> contextlib.AbstractAsyncContextManager[OpenedPath]:
        """:meth:`.PathOpener.open_path`: the authenticated stream to ``ref``."""
        return self.opener.open_path(ref, purpose, failed_relays, accept_wait_s, progress,
                                     relay_rate_bps, bitrate_bps)

    # -- caller ---------------------------------------------------------------------------------

    async def send(self, to: UserRef | str, path: Path,
                   accept_wait_s: float = ACCEPT_WAIT_S) -> dict[str, Any]:
        """Send ``path`` to ``to`` (``NAME`` or ``NAME#KEYPREFIX``). A path that fails
        mid-transfer (a relay dying, say) is replaced by a new session on another path, and the
        transfer resumes where the receiver's data ends. When the callee keeps the invite as a
        contact request, wait up to ``accept_wait_s`` for it to be accepted
        (:class:`NotAccepted` otherwise)."""
        try:
            ref = to if isinstance(to, UserRef) else parse_user_ref(to)
        except records.RecordError as exc:
            raise SendFailed(str(exc)) from None
        if not 0 < accept_wait_s <= MAX_ACCEPT_WAIT_S:
            raise SendFailed(f"the wait for acceptance is in (0, {MAX_ACCEPT_WAIT_S:g}] s")
        if not path.is_file():  # noqa: ASYNC240
            raise SendFailed(f"{path} is not a readable file")
        transfer_id = os.urandom(16)
        sha = await asyncio.to_thread(file_sha256, path)
        failed_relays: set[bytes] = set()
        slog = log.bind(peer=ref.name)
        errors: list[str] = []
        lost_a_path = False
        failures = 0
        for _ in range(MAX_RENEWED_SESSIONS):
            if failures >= MAX_SESSIONS_PER_SEND:
                break
            try:
                return await self._send_once(ref, path, transfer_id, sha, failed_relays,
                                             accept_wait_s, first_attempt=not lost_a_path)
            except LostMidTransfer as exc:
                lost_a_path = True
                if exc.at_relay_limit:
                    # not a failure: the relay ended the session where it said it would
                    slog.info("relay_session_limit", to_user=ref.name, reason=str(exc),
                              resuming=True)
                    continue
                failures += 1
                errors.append(str(exc))
                if exc.relay is not None:
                    failed_relays.add(exc.relay.key)
                    self.relays.history.failed(exc.relay.key)
                slog.warning("transfer_path_lost", to_user=ref.name, error=str(exc),
                             resuming=True)
            except NotAccepted:
                raise
            except SendFailed as exc:
                if not lost_a_path:
                    raise
                # what took the path down (a supernode) may be failing the peer over too
                failures += 1
                errors.append(str(exc))
                await asyncio.sleep(RESUME_RETRY_PAUSE_S)
        raise SendFailed(f"transfer failed on every path tried: {'; '.join(errors)}")

    async def _send_once(self, ref: UserRef, path: Path, transfer_id: bytes, sha: str,
                         failed_relays: set[bytes], accept_wait_s: float,
                         first_attempt: bool = False) -> dict[str, Any]:
        progress: dict[str, Any] = {"to": ref.name, "name": path.name, "sent": 0,
                                    "size": 0, "path": None, "state": "signalling"}
        self.sending.append(progress)
        try:
            async with self.opener.open_path(ref, FILE, failed_relays, accept_wait_s,
                                      progress, zero_rtt=first_attempt) as opened:
                stream, timeline, answer = opened.stream, opened.timeline, opened.answer
                progress.update(path=stream.path, state="sending")
                moving = Moving(stream, opened.late) if opened.late is not None else None

                def update(sent: int, size: int) -> None:
                    progress.update(sent=sent, size=size)
                    if moving is not None:
                        progress.update(path=moving.stream.path)

                started = time.monotonic()
                try:
                    if moving is None:
                        done = await send_file(stream, path, update, transfer_id, sha,
                                               first_attempt=first_attempt)
                    else:
                        done = await moving.send(path, update, transfer_id, sha,
                                                 first_attempt=first_attempt)
                except PathLost as exc:
                    lost = stream if moving is None else moving.stream
                    raise LostMidTransfer(
                        f"{lost.path} lost after {progress['sent']} bytes: {exc}",
                        lost.relay, at_relay_limit=transport_hooks.at_relay_limit(exc)
                    ) from None
                except TransferError as exc:
                    raise SendFailed(f"transfer failed: {exc}") from None
                finally:
                    if moving is not None:
                        await close_quietly(moving.stream)
                final, selected, seconds = stream, timeline.selected, done.seconds
                if moving is not None and moving.moved_from is not None:
                    final, selected = moving.stream, moving.attempt
                    seconds = time.monotonic() - started  # both paths
                    self.connect_stats.record_upgrade(opened.invite.candidates.nat,
                                                      answer.candidates.nat, timeline.events)
                return {"path": final.path,
                        "technique": self.paths.technique(selected, opened.session,
                                                          opened.invite.candidates,
                                                          answer.candidates),
                        "relay": final.relay.id if final.relay else None,
                        "bytes": done.bytes, "seconds": round(seconds, 4),
                        "sha256": done.sha256, "resumed_from": done.resumed_from,
                        "upgraded_from": moving.moved_from if moving is not None else None,
                        "timeline": timeline.events}
        finally:
            self.sending.remove(progress)

"""Calls through the client: the ``call`` and ``calls`` control commands, and answering.

A call is a media session whose invite says ``purpose: "call"``: the same lookup, signed
invite and answer, consent rules (:mod:`overlay.media.consent`) and path race as a file
transfer (:meth:`MediaService.open_path`; relays in the order of
:mod:`overlay.media.call_relays`, a datagram relay before a TCP relay, each relay session
asking for the call's rate). Both sides then run a
:class:`~overlay.call.session.CallSession` over the path (:mod:`overlay.call.stream_io`):
the caller for the seconds asked, the callee until the caller ends the stream.

The call's secret is never the media session's raw secret: it is
``BLAKE2b-256(key=X25519 secret, transcript hash, person="ovl-call-secret")``, and the call
id ``BLAKE2b-64(session id, person="ovl-call-id")``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from typing import Any

from structlog.typing import FilteringBoundLogger

from overlay.call.frames import CALL_ID_BYTES
from overlay.call.session import (
    DEFAULT_BITRATE_BPS,
    CallSession,
    CallStats,
    relay_rate_bps,
)
from overlay.call.stream_io import LOST_GRACE_S, FrameStream, StreamCall
from overlay.client.control import ControlError, ControlServer, JSONObject
from overlay.core import records
from overlay.core.logs import get_logger
from overlay.core.offers import MAX_BITRATE_BPS, MIN_BITRATE_BPS
from overlay.core.user_ref import parse_user_ref
from overlay.media.call_relays import call_relay_rate_bps
from overlay.media.consent import (
    ACCEPT_WAIT_S,
    MAX_ACCEPT_WAIT_S,
    NotAccepted,
    Offline,
    SendFailed,
)
from overlay.media.late_paths import LateDirect
from overlay.media.service import CALL, MediaService, OpenedPath
from overlay.media.stream import MediaStream

log = get_logger(__name__)

DEFAULT_SECONDS = 10.0
MAX_SECONDS = 3600.0
#: a callee ends a call the caller has not ended after this long
MAX_ANSWERED_S = MAX_SECONDS + 60.0
#: calls a client answers at once; another caller's path is closed unused
MAX_ANSWERED_CALLS = 4
#: calls (in progress and ended) the ``calls`` command shows
MAX_RECENT_CALLS = 16
#: the keys of a ``--json`` line, exactly as the issue lists them
LINE_KEYS = ("path", "relay", "seconds", "frames_sent", "frames_received", "loss_pct",
             "late_pct", "jitter_ms", "one_way_ms_p50", "one_way_ms_p95", "mos", "final")


def call_secret(opened: OpenedPath) -> tuple[bytes, bytes]:
    """The call's secret and id, derived from the media session (both sides alike)."""
    secret = hashlib.blake2b(opened.transcript, key=opened.shared, digest_size=32,
                             person=b"ovl-call-secret").digest()
    call_id = hashlib.blake2b(opened.invite.session_id, digest_size=CALL_ID_BYTES,
                              person=b"ovl-call-id").digest()
    return secret, call_id


def line_json(stats: CallStats) -> JSONObject:
    """One ``--json`` line: the issue's keys only."""
    full = stats.to_json()
    return {key: full[key] for key in LINE_KEYS}


class Calls:
    """The client's calls: placing them (``call``), answering them (set as the media
    service's call handler), and the recent ones with their latest line (``calls``)."""

    def __init__(self, media: MediaService) -> None:
        self.media = media
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT_CALLS)
        media.call_handler = self.answer

    def register(self, control: ControlServer) -> None:
        control.register("call", self.call, {"user": (str, True),
                                             "seconds": ((int, float), False),
                                             "bitrate_bps": (int, False),
                                             "wait_s": ((int, float), False)},
                         "call a user (NAME or NAME#KEYPREFIX) for `seconds` (default "
                         f"{DEFAULT_SECONDS:g}) at `bitrate_bps` (default "
                         f"{DEFAULT_BITRATE_BPS}); wait_s: how long to wait for a contact "
                         f"request to be accepted (default {ACCEPT_WAIT_S:g}, at most "
                         f"{MAX_ACCEPT_WAIT_S:g}): its lines, one a second, and the final one",
                         timeout_s=float("inf"))
        control.register("calls", self.calls, help="recent calls and their latest line")

    async def calls(self, args: JSONObject) -> JSONObject:
        return {"calls": list(self.recent)}

    async def call(self, args: JSONObject) -> JSONObject:
        try:
            ref = parse_user_ref(str(args["user"]))
        except records.RecordError as exc:
            raise ControlError(str(exc)) from None
        seconds = float(args.get("seconds", DEFAULT_SECONDS))
        bitrate = int(args.get("bitrate_bps", DEFAULT_BITRATE_BPS))
        if not 0 < seconds <= MAX_SECONDS:
            raise ControlError(f"seconds is in (0, {MAX_SECONDS:g}]")
        if not MIN_BITRATE_BPS <= bitrate <= MAX_BITRATE_BPS:
            raise ControlError(f"bitrate_bps is {MIN_BITRATE_BPS} to {MAX_BITRATE_BPS}")
        wait_s = float(args.get("wait_s", ACCEPT_WAIT_S))
        if not 0 < wait_s <= MAX_ACCEPT_WAIT_S:
            raise ControlError(f"wait_s is in (0, {MAX_ACCEPT_WAIT_S:g}]")
        try:
            relay_rate = call_relay_rate_bps(relay_rate_bps(bitrate))
            async with self.media.open_path(ref, CALL, set(), wait_s, relay_rate_bps=relay_rate,
                                            bitrate_bps=bitrate) as opened:
                lines: list[JSONObject] = []
                entry = self._entry(ref.name, outgoing=True)
                final = await self._run(opened, True, seconds, bitrate, entry, lines)
        except Offline as exc:
            raise ControlError(str(exc), reason="offline") from None
        except NotAccepted as exc:
            raise ControlError(str(exc), reason="not_accepted") from None
        except SendFailed as exc:
            raise ControlError(str(exc)) from None
        return {"lines": lines, "final": final}

    async def answer(self, opened: OpenedPath) -> None:
        """The media service's call handler: run an answered call until the caller ends it
        (at most :data:`MAX_ANSWERED_CALLS` at once)."""
        if sum(1 for c in self.recent if c["active"] and not c["outgoing"]) \
                >= MAX_ANSWERED_CALLS:
            log.warning("call_refused", peer=opened.invite.from_user, reason="too many calls")
            return
        entry = self._entry(opened.invite.from_user, outgoing=False)
        # the caller's bitrate when its invite says it (an older caller's: the default)
        bitrate = opened.invite.bitrate_bps or DEFAULT_BITRATE_BPS
        await self._run(opened, False, MAX_ANSWERED_S, bitrate, entry, [])

    def _entry(self, peer: str, outgoing: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"peer": peer, "outgoing": outgoing, "started_at": time.time(),
                                 "active": True, "line": None}
        self.recent.append(entry)
        return entry

    async def _run(self, opened: OpenedPath, caller: bool, seconds: float, bitrate: int,
                   entry: dict[str, Any], lines: list[JSONObject]) -> JSONObject:
        stream = opened.stream
        secret, call_id = call_secret(opened)
        relay = stream.relay.id if stream.relay else None
        session = CallSession(secret, call_id, caller=caller, now=time.monotonic(),
                              path=stream.path, relay=relay, bitrate_bps=bitrate)
        slog = log.bind(session=opened.invite.session_id.hex(), peer=entry["peer"])
        slog.info("call_started", path=stream.path, relay=relay, caller=caller)

        def on_line(stats: CallStats) -> None:
            line = line_json(stats)
            lines.append(line)
            entry["line"] = line

        late = opened.late
        runner = StreamCall(session, stream, LOST_GRACE_S if late is not None else 0.0,
                            awaits_mirror=late is not None)
        following = [asyncio.ensure_future(_follow(late, runner, session, caller, slog)),
                     asyncio.ensure_future(_mirror(late, runner, session, caller, slog))] \
            if late is not None else []
        try:
            final = line_json(await runner.run(seconds, on_line))
        finally:
            entry["active"] = False
            for task in following:
                task.cancel()
        entry["line"] = final
        entry["gap_ms"] = session.stats(time.monotonic()).gap_ms
        # what this side sent at, and the size of the peer's frames (the peer's bitrate)
        entry.update(bitrate_bps=bitrate, peer_payload_bytes=session.peer_payload_bytes)
        slog.info("call_ended", error=runner.error, carried_as=runner.mode,
                  path_changes=session.path_changes, gap_ms=entry["gap_ms"], **final)
        return final


async def _mirror(late: LateDirect, runner: StreamCall, session: CallSession, caller: bool,
                  slog: FilteringBoundLogger) -> None:
    """A call on a TCP stream sends a copy of each frame on a relay path too (its mirror,
    :mod:`overlay.call.stream_io`): the caller makes a spare relay path the mirror as soon as
    one is held (``MIRROR``), the callee adds each path so marked. When the path in use
    fails, the mirror becomes it at once."""
    mirrors: dict[int, MediaStream] = {}

    def promoted(frames: FrameStream) -> None:
        stream = mirrors.get(id(frames))
        if stream is not None:
            relay = stream.relay.id if stream.relay else None
            session.switch_path(stream.path, relay)
            slog.info("call_moved", attempt="mirror", path=stream.path, relay=relay)

    runner.promoted = promoted
    while True:
        if caller:
            await late.spare_added.wait()
            late.spare_added.clear()
            if runner.mode != "stream" or runner.mirrors:
                continue
            chosen = await late.mirror()
            if chosen is None:
                continue
        else:
            chosen = await late.next_mirror()
        name, stream = chosen
        mirrors[id(stream)] = stream
        runner.add_mirror(stream)
        slog.info("call_mirrored", attempt=name, path=stream.path,
                  relay=stream.relay.id if stream.relay else None)


async def _follow(late: LateDirect, runner: StreamCall, session: CallSession, caller: bool,
                  slog: FilteringBoundLogger) -> None:
    """Move the call to each path selected after the race: a direct path that completed
    later (an upgrade), or, when the path in use fails, a spare relay (the caller SELECTs
    it; the callee moves when that SELECT arrives)."""
    while True:
        if caller:
            upgrade = asyncio.ensure_future(late.next_path())
            lost = asyncio.ensure_future(runner.path_lost.wait())
            try:
                await asyncio.wait([upgrade, lost], return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                if not upgrade.done():
                    upgrade.cancel()
            chosen = upgrade.result() if upgrade.done() and not upgrade.cancelled() \
                else await late.fail_over()
            if chosen is None:
                slog.warning("call_path_lost", reason="no spare path")
                return
        else:
            chosen = await late.next_path()
        name, stream = chosen
        relay = stream.relay.id if stream.relay else None
        runner.switch(stream)
        session.switch_path(stream.path, relay)
        slog.info("call_moved", attempt=name, path=stream.path, relay=relay)

"""One call, sans-IO: frames out every 20 ms, frames in, one stats line a second.

The adapter that runs it owns a datagram path and a clock and does four things:

- on :meth:`CallSession.next_timer`, call :meth:`CallSession.timer` and send every datagram
  it returns on the current path (a path that cannot take one now drops it and calls
  :meth:`CallSession.sender_dropped`: no backlog ever builds up);
- hand every datagram that arrives to :meth:`CallSession.datagram_received`;
- print :meth:`CallSession.stats_due` when it returns a line, and :meth:`CallSession.finish`
  at the end (the line with ``"final": true``);
- on a path change, call :meth:`CallSession.switch_path`: sequence numbers continue, and the
  gap in the received audio is measured by the jitter buffer (``gap_ms``).

**Payload** (inside the encrypted frame, :mod:`overlay.call.frames`)::

    echo_sent_ms(4) | echo_hold_ms(2) | filler

``echo_sent_ms`` is the ``sent_ms`` of the last frame this side received and ``echo_hold_ms``
how long ago it came (``0xFFFF``: nothing yet), as in RTCP's LSR/DLSR: the peer gets the
path's RTT as ``now - echo_sent_ms - echo_hold_ms`` on its own clock. The filler is
pseudo-random bytes so that the payload is ``bitrate * 20 ms`` bytes (60 at 24 kbit/s).

**Delay without synchronized clocks.** The one-way delay of frame i is estimated as
``min RTT / 2 + (transit_i - min transit)`` (``transit = arrival - sent`` on two clocks: the
offset cancels in the difference). The mouth-to-ear delay used for the MOS is
``min RTT / 2 +`` the jitter buffer's delay averaged over the call so far (G.107's ``Ta`` is a
mean one-way delay; the loss is the call's so far too) ``+``
:data:`~overlay.call.quality.CODEC_DELAY_MS`, with the loss after the jitter buffer (network
loss and late frames), for the codec model :data:`~overlay.call.quality.G711_PLC`.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter, deque
from dataclasses import dataclass, field

from overlay.call.errors import BadFrame
from overlay.call.frames import (
    MAX_PAYLOAD_BYTES,
    MIN_DATAGRAM_BYTES,
    FrameOpener,
    FrameSealer,
    call_keys,
)
from overlay.call.jitter import FRAME_MS, JitterBuffer, percentile
from overlay.call.quality import CODEC_DELAY_MS, G711_PLC, CodecModel, LossPattern, burst_ratio, mos
from overlay.core.offers import MAX_BITRATE_BPS, MIN_BITRATE_BPS

_ECHO = struct.Struct(">IH")
NO_ECHO = 0xFFFF
DEFAULT_BITRATE_BPS = 24_000
#: frames sent at most in one timer call when the loop was late (older ones are skipped)
MAX_CATCH_UP = 3
#: one-way and RTT samples kept for the percentiles (a minute of frames)
SAMPLES = 3000
RTT_SAMPLES = 50
STATS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class CallStats:
    """One ``--json`` line."""

    path: str
    relay: str | None
    seconds: float
    frames_sent: int
    frames_received: int
    #: network loss (before the jitter buffer), and late frames dropped by it, in %
    loss_pct: float
    late_pct: float
    jitter_ms: float
    one_way_ms_p50: float
    one_way_ms_p95: float
    mos: float
    final: bool
    #: beyond the issue's fields: the path's RTT and the longest gap in the received audio
    rtt_ms: float | None = None
    gap_ms: int = 0

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "relay": self.relay, "seconds": self.seconds,
                "frames_sent": self.frames_sent, "frames_received": self.frames_received,
                "loss_pct": self.loss_pct, "late_pct": self.late_pct,
                "jitter_ms": self.jitter_ms, "one_way_ms_p50": self.one_way_ms_p50,
                "one_way_ms_p95": self.one_way_ms_p95, "mos": self.mos, "final": self.final,
                "rtt_ms": self.rtt_ms, "gap_ms": self.gap_ms}


@dataclass
class SendCounters:
    sent: int = 0
    #: frames the path could not take (sender-side dropping) and frames skipped by a late loop
    dropped: int = 0
    skipped: int = 0


@dataclass
class ReceiveCounters:
    received: int = 0
    refused: Counter[str] = field(default_factory=Counter)


def payload_bytes(bitrate_bps: int, frame_ms: int = FRAME_MS) -> int:
    if not MIN_BITRATE_BPS <= bitrate_bps <= MAX_BITRATE_BPS:
        raise ValueError(f"a call's bitrate is {MIN_BITRATE_BPS} to {MAX_BITRATE_BPS} bit/s")
    return min(MAX_PAYLOAD_BYTES, max(_ECHO.size, bitrate_bps * frame_ms // 8000))


def relay_rate_bps(bitrate_bps: int, frame_ms: int = FRAME_MS) -> int:
    """The rate to ask a relay for: both directions' frames on the wire (a relay session's
    rate covers both directions, :mod:`overlay.relay.budget`; UDP/IP headers not counted).
    At 24 kbit/s of payload: 2 x 100 bytes x 50 frames/s = 80 kbit/s."""
    frame = payload_bytes(bitrate_bps, frame_ms) + MIN_DATAGRAM_BYTES
    return 2 * frame * 8 * (1000 // frame_ms)


class CallSession:
    def __init__(self, shared_secret: bytes, call_id: bytes, *, caller: bool, now: float,
                 path: str, relay: str | None = None,
                 bitrate_bps: int = DEFAULT_BITRATE_BPS,
                 codec: CodecModel = G711_PLC) -> None:
        keys = call_keys(shared_secret, call_id)
        self.sealer = FrameSealer(keys, call_id, caller=caller)
        self.opener = FrameOpener(keys, call_id, caller=caller)
        self.buffer = JitterBuffer()
        self.codec = codec
        self.size = payload_bytes(bitrate_bps)
        #: the payload size of the peer's latest frame (its bitrate; 0: none yet)
        self.peer_payload_bytes = 0
        #: what to ask a relay for (both directions)
        self.relay_rate_bps = relay_rate_bps(bitrate_bps)
        self.path, self.relay = path, relay
        self.path_changes = 0
        self.started = now
        self.send = SendCounters()
        self.recv = ReceiveCounters()
        self.loss_pattern = LossPattern()
        self._frames_due = 0  # frame k is due at started + k * FRAME_MS
        self._next_stats = now + STATS_INTERVAL_S
        self._echo: tuple[int, float] | None = None  # (peer sent_ms, when it came)
        self._rtts: deque[float] = deque(maxlen=RTT_SAMPLES)
        self._one_way: deque[float] = deque(maxlen=SAMPLES)
        self._filler = hashlib.blake2b(call_id, digest_size=64).digest() * (
            MAX_PAYLOAD_BYTES // 64 + 1)
        self.finished = False

    # -- sending -----------------------------------------------------------------------------

    @property
    def _next_frame(self) -> float:
        return self.started + self._frames_due * FRAME_MS / 1000.0

    def next_timer(self) -> float:
        return min(self._next_frame, self._next_stats)

    def timer(self, now: float) -> list[bytes]:
        """The frames due by ``now`` (sealed datagrams), after playing out what is due."""
        self.buffer_play(now)
        due: list[float] = []
        while self._next_frame <= now:
            due.append(self._next_frame)
            self._frames_due += 1
        if len(due) > MAX_CATCH_UP:
            self.send.skipped += len(due) - MAX_CATCH_UP
            self.sealer.next_seq += len(due) - MAX_CATCH_UP  # their slots stay empty
            due = due[-MAX_CATCH_UP:]
        out = [self._frame(at, now) for at in due]
        self.send.sent += len(out)
        return out

    def _frame(self, at: float, now: float) -> bytes:
        if self._echo is None:
            echo = _ECHO.pack(0, NO_ECHO)
        else:
            peer_sent, came = self._echo
            echo = _ECHO.pack(peer_sent, min(NO_ECHO - 1, round((now - came) * 1000)))
        offset = self.sealer.next_seq % 64
        payload = echo + self._filler[offset:offset + self.size - _ECHO.size]
        return self.sealer.seal(round(at * 1000), payload)

    def sender_dropped(self, frames: int = 1) -> None:
        """The path refused ``frames`` of the datagrams last returned (sender-side dropping
        on a congested path)."""
        self.send.dropped += frames

    # -- receiving ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes, now: float) -> None:
        try:
            frame = self.opener.open(data)
        except BadFrame as exc:
            self.recv.refused[exc.reason] += 1
            return
        self.recv.received += 1
        self.peer_payload_bytes = len(frame.payload)
        now_ms = now * 1000.0
        self.buffer.arrive(frame.seq, frame.sent_ms, frame.payload, now_ms)
        self._echo = (frame.sent_ms, now)
        if len(frame.payload) >= _ECHO.size:
            echo_sent, hold = _ECHO.unpack_from(frame.payload)
            if hold != NO_ECHO:
                rtt = ((round(now_ms) - echo_sent) % 2**32) - hold
                if 0 <= rtt < 60_000:
                    self._rtts.append(float(rtt))
        transits = self.buffer.transits
        self._one_way.append(self._rtt_floor_half() + transits[-1] - min(transits))

    def buffer_play(self, now: float) -> None:
        for slot in self.buffer.play(now * 1000.0):
            self.loss_pattern.add(slot.payload is None)

    # -- paths -------------------------------------------------------------------------------

    def switch_path(self, path: str, relay: str | None) -> None:
        """Send on a new path from now on: sequence numbers continue, RTT starts afresh."""
        if (path, relay) != (self.path, self.relay):
            self.path, self.relay = path, relay
            self.path_changes += 1
            self._rtts.clear()

    # -- stats -------------------------------------------------------------------------------

    def _rtt_floor_half(self) -> float:
        return min(self._rtts) / 2.0 if self._rtts else 0.0

    def mouth_to_ear_ms(self) -> float:
        return self._rtt_floor_half() + self.buffer.mean_delay_ms + CODEC_DELAY_MS

    def stats(self, now: float, final: bool = False) -> CallStats:
        buf = self.buffer
        samples = list(self._one_way)
        loss_after = buf.loss_after_pct()
        return CallStats(
            path=self.path, relay=self.relay, seconds=round(now - self.started, 3),
            frames_sent=self.send.sent, frames_received=self.recv.received,
            loss_pct=round(buf.loss_before_pct(), 2), late_pct=round(buf.late_pct(), 2),
            jitter_ms=round(buf.jitter.jitter_ms, 2),
            one_way_ms_p50=round(percentile(samples, 0.5), 1),
            one_way_ms_p95=round(percentile(samples, 0.95), 1),
            mos=round(mos(self.mouth_to_ear_ms(), loss_after, self.codec,
                          burst_ratio(self.loss_pattern)), 2) if buf.expected else 1.0,
            final=final, rtt_ms=round(self._rtts[-1], 1) if self._rtts else None,
            gap_ms=buf.stats.longest_gap_ms)

    def stats_due(self, now: float) -> CallStats | None:
        """A line once a second (call from the timer)."""
        if now < self._next_stats or self.finished:
            return None
        while self._next_stats <= now:
            self._next_stats += STATS_INTERVAL_S
        return self.stats(now)

    def finish(self, now: float) -> CallStats:
        """The summary (``"final": true``); the session sends nothing after it."""
        self.buffer_play(now)
        self.finished = True
        return self.stats(now, final=True)

"""The receiving side of a call's audio, sans-IO: an adaptive jitter buffer, the RFC 3550
interarrival jitter, and loss before and after the buffer.

Times are milliseconds: ``arrival_ms`` on the receiver's clock, ``sent_ms`` on the sender's
(from the frame header, modulo 2**32; unwrapped here). Frame ``seq`` was captured
``frame_ms`` after frame ``seq - 1``.

**Playout.** Frame ``seq`` plays at ``sent(seq) + play_offset`` (receiver clock), where
``sent(seq)`` is its header time (or, for a frame that never came, the time interpolated from
the last frame played). :meth:`JitterBuffer.play` is called on the receiver's 20 ms tick and
plays, in sequence order, every frame whose time has come; a frame not there at its time is
concealed (counted, a gap in the audio). A frame that arrives after its sequence number was
played or concealed is **late**: dropped and counted, never queued. A frame more than
:data:`MAX_TARGET_MS` of audio ahead of the playout point is dropped too (``overflow``): the
buffer never holds more than its window. Until the first slot is played, ``play_offset``
follows the fastest transit yet (``+ min_target_ms``; no audio has played, so nothing jumps)
and the window starts at the slot due: frames read in one go at the start do not anchor the
playout half a second behind the stream.

**Adaptation** (modelled on the delay manager of WebRTC's NetEq,
``modules/audio_coding/neteq/delay_manager.cc``: a histogram of relative arrival delays with
a forgetting factor, the target its 95 % quantile). The transit of a frame is
``arrival - sent`` (it contains the unknown clock offset, which cancels out); its relative
delay is ``transit - min(transit)`` over the last :data:`HISTORY` frames. Each arrival
enters its relative delay into :class:`DelayHistogram` (:data:`BUCKET_MS` buckets) after
scaling every bucket by :data:`FORGET` (per frame: a half-life of about 1.4 s of audio; the
first frames are averaged evenly, as NetEq's start weight does). The target delay is the
histogram's :data:`QUANTILE` quantile, bounded to [``min_target_ms`` (default
:data:`MIN_TARGET_MS`; a call on a TCP stream asks more, :mod:`overlay.call.stream_io`),
:data:`MAX_TARGET_MS`]; the wanted offset is ``min(transit) + target``. A late frame keeps
the target at least at its own relative delay for :data:`LATE_HOLD_MS` (fast attack: stalls
that recur every second or two cost late frames once), then lets go: a one-off burst (a TCP
stall, a path's hiccup) is forgotten within a few seconds instead of holding the delay, which
costs MOS, for the rest of the call. ``play_offset`` moves towards the wanted offset by at
most :data:`ADAPT_UP_MS` (up) or :data:`ADAPT_DOWN_MS` (down) per frame played, so the audio
neither jumps nor stalls.

**Jitter** is RFC 3550 section 6.4.1: ``D = (R_i - R_j) - (S_i - S_j)`` between consecutive
arrivals and ``J += (|D| - J) / 16``, in ms.

**Loss.** ``expected`` is the span of sequence numbers from the first received to the highest
one played so far (RFC 3550 A.3); ``lost`` (before the buffer) is expected minus frames that
arrived (played, late, or dropped as overflow); concealed frames (after the buffer) are the
lost plus the late and overflow ones. Each sequence number counts once: a second copy (a
mirror's) is a replay the frame opener refuses before the buffer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FRAME_MS = 20
MIN_TARGET_MS = 20.0
MAX_TARGET_MS = 200.0
#: how far the playout offset moves per frame played: down slowly (a 10 % time squeeze),
#: up fast (a 50 % stretch), as a late frame means audio is being lost now
ADAPT_DOWN_MS = 2.0
ADAPT_UP_MS = 10.0
#: a late frame keeps the target at least at its relative delay for this long
LATE_HOLD_MS = 2_500.0
#: frames whose fastest transit relative delays are measured from (4 s of audio)
HISTORY = 200
#: the delay histogram: bucket width, per-frame forgetting factor, the quantile targeted
BUCKET_MS = 5.0
FORGET = 0.99
QUANTILE = 0.95
#: frames the buffer may hold ahead of the playout point (its window)
CAPACITY = int(MAX_TARGET_MS // FRAME_MS) + 1


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


class DelayHistogram:
    """Relative delays (ms) with exponential forgetting (NetEq's ``Histogram``): each sample
    adds ``1 - FORGET`` of the mass after every bucket was scaled by :data:`FORGET` (while
    fewer than ``1 / (1 - FORGET)`` samples came, the samples are averaged evenly)."""

    def __init__(self, top_ms: float = MAX_TARGET_MS) -> None:
        self._buckets = [0.0] * (int(top_ms // BUCKET_MS) + 1)
        self._samples = 0

    def add(self, delay_ms: float) -> None:
        self._samples += 1
        weight = max(1.0 - FORGET, 1.0 / self._samples)
        keep = 1.0 - weight
        buckets = self._buckets
        for i in range(len(buckets)):
            buckets[i] *= keep
        index = min(len(buckets) - 1, max(0, int(delay_ms // BUCKET_MS)))
        buckets[index] += weight

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket where the mass reaches ``q`` (0.0 with no samples)."""
        if not self._samples:
            return 0.0
        total = sum(self._buckets)
        mass = 0.0
        for i, share in enumerate(self._buckets):
            mass += share
            if mass >= q * total:
                return (i + 1) * BUCKET_MS
        return len(self._buckets) * BUCKET_MS


class InterarrivalJitter:
    """RFC 3550 6.4.1, in milliseconds."""

    def __init__(self) -> None:
        self.jitter_ms = 0.0
        self._last_transit: float | None = None

    def add(self, transit_ms: float) -> None:
        if self._last_transit is not None:
            d = transit_ms - self._last_transit
            self.jitter_ms += (abs(d) - self.jitter_ms) / 16.0
        self._last_transit = transit_ms


@dataclass(frozen=True)
class Played:
    """One 20 ms slot of audio: the frame's payload, or None (concealed)."""

    seq: int
    payload: bytes | None


@dataclass
class BufferStats:
    arrived: int = 0
    late: int = 0
    overflow: int = 0
    duplicates: int = 0
    played: int = 0
    concealed: int = 0
    #: late frames from the first received on (the others were never expected)
    late_in_span: int = 0
    #: the longest run of concealed frames that audio resumed after, in ms (a path
    #: change's gap in the audio)
    longest_gap_ms: int = 0


class JitterBuffer:
    def __init__(self, frame_ms: int = FRAME_MS, min_target_ms: float = MIN_TARGET_MS) -> None:
        self.frame_ms = frame_ms
        #: the least playout delay beyond the fastest recent transit
        self.min_target_ms = min_target_ms
        self.stats = BufferStats()
        self.jitter = InterarrivalJitter()
        self.transits: deque[float] = deque(maxlen=HISTORY)
        self.delays = DelayHistogram()
        self.first_seq: int | None = None
        #: the next sequence number to play, and the sender time it has
        self.next_seq = 0
        self._next_sent = 0.0
        self.play_offset = 0.0
        self._frames: dict[int, tuple[float, bytes]] = {}
        self._sent_high = 0  # the highest unwrapped sent_ms
        self.highest_seq = -1
        #: (arrival, relative delay) of the frames that hold the target up: late ones, and
        #: those that came in time only thanks to the hold (the stall recurred)
        self._held: deque[tuple[float, float]] = deque(maxlen=64)
        self._gap = 0
        #: the sum of :attr:`delay_ms` over the slots played (for :attr:`mean_delay_ms`)
        self._delay_sum = 0.0

    # -- arrivals ----------------------------------------------------------------------------

    def _unwrap(self, sent_ms: int) -> float:
        if self.first_seq is None:
            self._sent_high = sent_ms
            return float(sent_ms)
        delta = (sent_ms - self._sent_high + 2**31) % 2**32 - 2**31
        value = self._sent_high + delta
        self._sent_high = max(self._sent_high, value)
        return float(value)

    def arrive(self, seq: int, sent_ms: int, payload: bytes, arrival_ms: float) -> str:
        """Take one frame (opened, not a replay); ``"queued"``, ``"late"``, ``"overflow"`` or
        ``"duplicate"``."""
        sent = self._unwrap(sent_ms)
        transit = arrival_ms - sent
        if self.first_seq is None:
            self.first_seq = self.next_seq = seq
            self._next_sent = sent
            self.play_offset = transit + self.min_target_ms
        elif not self._started_playing:  # no audio to jump yet: follow the fastest transit
            self.play_offset = min(self.play_offset, transit + self.min_target_ms)
        self.stats.arrived += 1
        self.jitter.add(transit)
        self.transits.append(transit)
        relative = transit - min(self.transits)
        self.delays.add(relative)
        self.highest_seq = max(self.highest_seq, seq)
        if seq < self.next_seq:
            self._held.append((arrival_ms, relative))
            self.stats.late += 1
            self.stats.late_in_span += seq >= self.first_seq
            return "late"
        self._expire_held(arrival_ms)
        if self._held and relative > self.delays.quantile(QUANTILE):
            self._held.append((arrival_ms, relative))  # in time only thanks to the hold
        if seq in self._frames:
            self.stats.duplicates += 1
            self.stats.arrived -= 1
            return "duplicate"
        if seq >= self._playout_seq(arrival_ms) + CAPACITY:
            self.stats.overflow += 1
            return "overflow"
        self._frames[seq] = (sent, payload)
        return "queued"

    @property
    def _started_playing(self) -> bool:
        return bool(self.stats.played or self.stats.concealed)

    def _playout_seq(self, now_ms: float) -> int:
        """Where the window starts: the next slot to play, or, before the first one played,
        the slot due at ``now_ms`` (frames read in one go at the start, e.g. after the
        receiver's loop was busy setting the call up, are not ahead of a playout point that
        has not started; at most :data:`HISTORY` slots)."""
        if self._started_playing:
            return self.next_seq
        overdue = int((now_ms - self._next_sent - self.play_offset) // self.frame_ms) + 1
        return self.next_seq + min(HISTORY, max(0, overdue))

    # -- playout ----------------------------------------------------------------------------

    @property
    def target_ms(self) -> float:
        """The playout delay the buffer aims at beyond the fastest recent transit."""
        if not self.transits:
            return self.min_target_ms
        spread = self.delays.quantile(QUANTILE)
        held = max((s for _, s in self._held), default=0.0)
        return min(MAX_TARGET_MS, max(self.min_target_ms, spread, held))

    def _expire_held(self, now_ms: float) -> None:
        """Forget the frames that came more than :data:`LATE_HOLD_MS` before ``now_ms``: they
        no longer hold the target up."""
        while self._held and self._held[0][0] < now_ms - LATE_HOLD_MS:
            self._held.popleft()

    @property
    def delay_ms(self) -> float:
        """How long the buffer currently holds audio beyond the fastest recent transit."""
        return self.play_offset - min(self.transits) if self.transits else 0.0

    @property
    def mean_delay_ms(self) -> float:
        """:attr:`delay_ms` averaged over every slot played so far (the current delay before
        the first)."""
        slots = self.stats.played + self.stats.concealed
        return self._delay_sum / slots if slots else self.delay_ms

    def play(self, now_ms: float) -> list[Played]:
        """Every slot whose time has come, in order (one per ``frame_ms`` of audio)."""
        out: list[Played] = []
        self._expire_held(now_ms)
        if self.first_seq is None:
            return out
        while self._next_sent + self.play_offset <= now_ms:
            self._delay_sum += self.delay_ms
            seq = self.next_seq
            frame = self._frames.pop(seq, None)
            if frame is not None:
                self._next_sent = frame[0]
                self.stats.played += 1
                self.stats.longest_gap_ms = max(self.stats.longest_gap_ms,
                                                self._gap * self.frame_ms)
                self._gap = 0
                out.append(Played(seq, frame[1]))
            else:
                self.stats.concealed += 1
                self._gap += 1
                out.append(Played(seq, None))
            self.next_seq = seq + 1
            self._next_sent += self.frame_ms
            self._adapt()
        return out

    def _adapt(self) -> None:
        wanted = min(self.transits) + self.target_ms
        step = max(-ADAPT_DOWN_MS, min(ADAPT_UP_MS, wanted - self.play_offset))
        self.play_offset += step

    # -- loss -------------------------------------------------------------------------------

    @property
    def expected(self) -> int:
        """Frames from the first received up to the playout point, but not beyond the
        highest received (slots concealed after the stream stopped are not losses yet)."""
        if self.first_seq is None:
            return 0
        return max(0, min(self.next_seq - 1, self.highest_seq) - self.first_seq + 1)

    @property
    def lost_before(self) -> int:
        """Expected frames that never arrived (network loss; frames the buffer dropped as
        overflow, e.g. read in one go after the receiver's loop stalled, did arrive)."""
        stats = self.stats
        return max(0, self.expected - stats.played - stats.late_in_span - stats.overflow)

    @property
    def missing_after(self) -> int:
        """Expected frames not played: network loss and late frames together."""
        return max(0, self.expected - self.stats.played)

    def loss_before_pct(self) -> float:
        return 100.0 * self.lost_before / self.expected if self.expected else 0.0

    def loss_after_pct(self) -> float:
        return 100.0 * self.missing_after / self.expected if self.expected else 0.0

    def late_pct(self) -> float:
        return 100.0 * self.stats.late_in_span / self.expected if self.expected else 0.0

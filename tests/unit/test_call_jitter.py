"""The call jitter buffer: playout, adaptation, late and lost frames, RFC 3550 jitter."""

from __future__ import annotations

import random

import pytest

from overlay.call.jitter import (
    BUCKET_MS,
    CAPACITY,
    FORGET,
    LATE_HOLD_MS,
    MAX_TARGET_MS,
    MIN_TARGET_MS,
    DelayHistogram,
    InterarrivalJitter,
    JitterBuffer,
    percentile,
)


def _run(delays: list[float | None], *, tick_ms: float = 20.0, offset: float = 5000.0,
         min_target_ms: float = MIN_TARGET_MS) -> tuple[JitterBuffer, list[int | None]]:
    """Frame i sent at 20*i (sender clock), arrives at 20*i + offset + delays[i] (None: lost);
    the receiver ticks every ``tick_ms``; the sequence numbers it plays (None: concealed)."""
    buf = JitterBuffer(min_target_ms=min_target_ms)
    arrivals = sorted((20 * i + offset + d, i) for i, d in enumerate(delays) if d is not None)
    played: list[int | None] = []
    now, k = offset, 0
    end = 20 * len(delays) + offset + 400
    while now < end:
        while k < len(arrivals) and arrivals[k][0] <= now:
            at, i = arrivals[k]
            buf.arrive(i, 20 * i, b"%d" % i, at)
            k += 1
        played += [p.seq if p.payload is not None else None for p in buf.play(now)]
        now += tick_ms
    return buf, played


Trace = list[tuple[float, float, float]]


def _trace(delays: list[float | None], *, tick_ms: float = 10.0, offset: float = 5000.0,
           min_target_ms: float = MIN_TARGET_MS) -> tuple[JitterBuffer, Trace]:
    """As :func:`_run`, recording ``(call time, target_ms, delay_ms)`` at every tick."""
    buf = JitterBuffer(min_target_ms=min_target_ms)
    arrivals = sorted((20 * i + offset + d, i) for i, d in enumerate(delays) if d is not None)
    trace: Trace = []
    now, k = offset, 0
    while now < 20 * len(delays) + offset + 400:
        while k < len(arrivals) and arrivals[k][0] <= now:
            at, i = arrivals[k]
            buf.arrive(i, 20 * i, b"", at)
            k += 1
        buf.play(now)
        trace.append((now - offset, buf.target_ms, buf.delay_ms))
        now += tick_ms
    return buf, trace


def test_steady_stream_plays_every_frame_in_order() -> None:
    buf, played = _run([30.0] * 200)
    assert played[:200] == list(range(200))
    assert buf.stats.late == buf.lost_before == buf.missing_after == 0
    assert buf.jitter.jitter_ms == 0.0
    assert buf.target_ms == MIN_TARGET_MS


def test_lost_frames_are_concealed_and_counted_before_the_buffer() -> None:
    delays: list[float | None] = [30.0] * 100
    for i in (10, 11, 50):
        delays[i] = None
    buf, played = _run(delays)
    assert [i for i, p in enumerate(played[:100]) if p is None] == [10, 11, 50]
    assert buf.lost_before == 3 and buf.stats.late == 0
    assert buf.stats.longest_gap_ms == 40
    assert buf.loss_after_pct() == pytest.approx(300 / buf.expected)


def test_late_frame_is_dropped_not_queued() -> None:
    delays: list[float | None] = [30.0] * 100
    delays[40] = 30.0 + 300.0  # arrives long after its slot
    buf, played = _run(delays)
    assert played[40] is None and 40 not in played
    assert buf.stats.late == 1 and buf.lost_before == 0
    assert buf.late_pct() == pytest.approx(100 / buf.expected)


def test_target_adapts_to_jitter_and_keeps_late_frames_rare() -> None:
    rng = random.Random(1)
    delays: list[float | None] = [40.0 + rng.uniform(0, 60) for _ in range(750)]  # 15 s
    buf, played = _run(delays, tick_ms=10.0)
    assert 50.0 <= buf.target_ms <= 60.0  # p95 of a 0..60 ms spread
    assert buf.play_offset - 5000.0 == pytest.approx(40.0 + buf.target_ms, abs=8.0)
    late_after_warmup = sum(1 for p in played[200:750] if p is None)
    assert late_after_warmup <= 0.03 * 550
    assert buf.jitter.jitter_ms == pytest.approx(20.0, rel=0.35)  # E|D| for U(0,60) = 20


def test_target_is_bounded() -> None:
    rng = random.Random(2)
    buf, _ = _run([rng.uniform(0, 2000) for _ in range(300)], tick_ms=10.0)
    assert buf.target_ms == MAX_TARGET_MS


def test_buffer_never_holds_more_than_its_window() -> None:
    """Once playing, a frame more than the window ahead of the playout point is dropped."""
    buf = JitterBuffer()
    buf.arrive(0, 0, b"", 1000.0)
    assert [p.seq for p in buf.play(1000.0 + MIN_TARGET_MS)] == [0]
    results = [buf.arrive(i, 20 * i, b"", 1020.0) for i in range(1, 200)]
    assert results.count("queued") == CAPACITY
    assert buf.stats.overflow == 199 - CAPACITY
    assert buf.arrive(5, 100, b"", 1020.0) == "duplicate"
    buf.play(1000.0 + 20 * 200 + MIN_TARGET_MS)
    assert buf.lost_before == 0  # they arrived: dropped by the buffer, not lost on the way
    assert buf.missing_after == 199 - CAPACITY


def test_frames_read_in_one_go_at_the_start_are_played_not_dropped() -> None:
    """The first half second of frames is read at once (the receiver's loop was busy setting
    the call up), then the stream is steady. The playout point starts from the fastest of
    them, not the first (which would lag 0.5 s behind the stream, drop every frame beyond its
    window as overflow while it came down: 155 of them, and hold half a second of delay for
    seconds), and nothing is lost."""
    delays: list[float | None] = [30.0] * 1000
    for i in range(25):
        delays[i] = 30.0 + 500.0 - 20.0 * i
    buf, played = _run(delays, tick_ms=10.0)
    assert buf.stats.overflow == 0 and buf.stats.late == 0
    assert played[:1000] == list(range(1000))
    assert buf.mean_delay_ms <= MIN_TARGET_MS + 2


def test_sender_clock_wraps() -> None:
    buf = JitterBuffer()
    base = 2**32 - 100
    for i in range(20):
        buf.arrive(i, (base + 20 * i) % 2**32, b"", 20.0 * i + 7.0)
    assert buf.jitter.jitter_ms == 0.0
    assert len(buf.play(20.0 * 19 + 7.0 + MIN_TARGET_MS)) == 20


def test_rfc3550_jitter_formula() -> None:
    j = InterarrivalJitter()
    for transit in (10.0, 26.0, 10.0):
        j.add(transit)
    first = 16.0 / 16
    assert j.jitter_ms == pytest.approx(first + (16.0 - first) / 16)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.95) == 0.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert percentile([3.0], 0.5) == 3.0


def test_a_late_frame_deepens_the_buffer_at_once() -> None:
    """Stalls of 45 ms every 2 s (a busy sender): the first one costs late frames, the next
    ones none (fast attack); the buffer does not grow beyond what the stalls need."""
    delays: list[float | None] = [5.0] * 500
    for start in range(50, 500, 100):
        for k in range(3):
            delays[start + k] = 5.0 + 45.0 - 20.0 * k
    buf, played = _run(delays, tick_ms=5.0)
    late_at = [i for i, p in enumerate(played[:500]) if p is None]
    assert late_at and all(i < 60 for i in late_at)
    assert buf.target_ms <= 50.0


def test_a_mirrored_streams_slower_copy_is_in_time_above_the_floor() -> None:
    """A call on a TCP stream with a mirror: the stream's copy comes in 30 ms, the mirror's
    (a relay's extra hop) in 65 ms; now and then the stream stalls for an RTT and the
    mirror's copy is the first. At the buffer's 20 ms floor some of those come too late (the
    target follows the first copies and lags each stall); at the stream floor
    (60 ms) every one plays."""
    rng = random.Random(7)
    delays: list[float | None] = []
    stalled_until = -1
    for i in range(500):
        if i > stalled_until and rng.random() < 0.02:
            stalled_until = i + 8
        delays.append(65.0 if i <= stalled_until else 30.0)
    buf_low, _ = _run(delays)
    buf_floor, played = _run(delays, min_target_ms=60.0)
    assert buf_low.stats.late > 0
    assert buf_floor.stats.late == 0 and None not in played[:500]
    assert buf_floor.target_ms == 60.0


def test_a_one_off_burst_is_forgotten_within_seconds() -> None:
    """A call on a stream (60 ms floor): at 5 s one TCP stall holds 11 frames back by up to
    200 ms (they come together), then the stream is steady again. The buffer deepens at once,
    then comes back to its floor (target and delay) within 5 s of the burst, not for the rest
    of the call (a deep buffer costs MOS in delay for nothing)."""
    delays: list[float | None] = [30.0] * 1000
    for k in range(11):
        delays[250 + k] = 30.0 + 200.0 - 20.0 * k
    buf, trace = _trace(delays, min_target_ms=60.0)
    assert max(target for t, target, _ in trace if 5000 <= t < 6000) >= 150.0  # fast attack
    after = [(target, delay) for t, target, delay in trace if 10_000 <= t < 20_000]
    assert all(target == 60.0 for target, _ in after)
    assert all(delay <= 61.0 for _, delay in after)
    assert buf.stats.late <= 11


def test_steady_jitter_keeps_a_steady_target() -> None:
    """Uniform 0..30 ms jitter for 30 s: after the first seconds the target stays within one
    histogram bucket (no oscillation) and no frame is late."""
    rng = random.Random(3)
    buf, trace = _trace([40.0 + rng.uniform(0, 30) for _ in range(1500)])
    targets = [target for t, target, _ in trace if 4000 <= t < 30_000]
    delays = [delay for t, _, delay in trace if 4000 <= t < 30_000]
    assert max(targets) - min(targets) <= BUCKET_MS
    assert max(delays) - min(delays) <= BUCKET_MS
    assert buf.stats.late == 0


def test_the_buffer_adds_no_loss_to_a_steady_lossy_stream() -> None:
    """Constant delay with 2 % of the frames lost: every missing slot is a lost frame (none
    late, loss after the buffer equals loss before) and the target stays at its floor."""
    rng = random.Random(7)
    delays: list[float | None] = [None if rng.random() < 0.02 else 30.0 for _ in range(1500)]
    buf, trace = _trace(delays)
    assert buf.stats.late == 0
    assert buf.missing_after == buf.lost_before == delays[:buf.expected].count(None)
    assert {target for _, target, _ in trace} == {MIN_TARGET_MS}


def test_delay_histogram_forgets_a_spike() -> None:
    hist = DelayHistogram()
    for _ in range(300):
        hist.add(2.0)
    for _ in range(10):
        hist.add(180.0)
    assert hist.quantile(0.95) == 185.0  # 10 % of the mass is the spike
    steps = 0
    while hist.quantile(0.95) > BUCKET_MS:
        hist.add(2.0)
        steps += 1
    # the spike's share (1 - FORGET) * 10 falls under 5 % after about ln(2) / (1 - FORGET)
    assert steps <= 1.2 * 0.7 / (1.0 - FORGET)
    assert DelayHistogram().quantile(0.95) == 0.0


def test_late_hold_lets_go() -> None:
    """One late frame holds the target at its delay for LATE_HOLD_MS, no longer."""
    delays: list[float | None] = [10.0] * 600
    delays[100] = 10.0 + 80.0
    _, trace = _trace(delays)
    held = [t for t, target, _ in trace if target >= 80.0]
    assert held and max(held) - min(held) <= LATE_HOLD_MS + 100


def test_mean_delay_weighs_a_late_burst_by_its_share_of_the_call() -> None:
    """A burst 1 s before the end of a 10 s call: the buffer is deep at the end, but the
    delay averaged over the call's slots (what the E-model's mean delay takes) is near the
    floor it kept for 9 s."""
    delays: list[float | None] = [30.0] * 500
    for k in range(11):
        delays[450 + k] = 30.0 + 200.0 - 20.0 * k
    buf, trace = _trace(delays[:], min_target_ms=60.0)
    end_delay = [delay for t, _, delay in trace if t <= 9800][-1]
    assert end_delay >= 150.0
    assert 60.0 <= buf.mean_delay_ms <= 75.0
    steady, _ = _trace([30.0] * 500, min_target_ms=60.0)
    assert steady.mean_delay_ms == pytest.approx(60.0, abs=0.5)

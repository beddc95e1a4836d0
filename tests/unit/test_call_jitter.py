"""The call jitter buffer: playout, adaptation, late and lost frames, RFC 3550 jitter."""

from __future__ import annotations

import random

import pytest

from overlay.call.jitter import (
    CAPACITY,
    MAX_TARGET_MS,
    MIN_TARGET_MS,
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
    buf = JitterBuffer()
    buf.arrive(0, 0, b"", 1000.0)
    results = [buf.arrive(i, 20 * i, b"", 1000.0) for i in range(1, 200)]
    assert results.count("queued") == CAPACITY - 1
    assert buf.stats.overflow == 200 - CAPACITY
    assert buf.arrive(5, 100, b"", 1000.0) == "duplicate"


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

"""Two call cores over a simulated network (deterministic; the real-socket run is
tests/process/test_call_loopback.py)."""

from __future__ import annotations

import heapq
import json
import os
import random
from collections.abc import Callable

import pytest

from overlay.call.session import CallSession, CallStats, payload_bytes

SECRET = os.urandom(32)
CALL_ID = os.urandom(8)
FIELDS = {"path", "relay", "seconds", "frames_sent", "frames_received", "loss_pct", "late_pct",
          "jitter_ms", "one_way_ms_p50", "one_way_ms_p95", "mos", "final"}

Link = Callable[[float, random.Random], float | None]


def link(delay_ms: float, loss: float = 0.0, jitter_ms: float = 0.0) -> Link:
    def one(now: float, rng: random.Random) -> float | None:
        if rng.random() < loss:
            return None
        return (delay_ms + rng.uniform(0.0, jitter_ms)) / 1000.0
    return one


def simulate(seconds: float, a_to_b: Link, b_to_a: Link, *, seed: int = 1,
             events: dict[float, Callable[[CallSession, CallSession], None]] | None = None,
             clock_offset: float = 1234.5) -> tuple[CallSession, CallSession,
                                                    list[CallStats], CallStats, CallStats]:
    """Caller A and callee B (whose clock is ``clock_offset`` s ahead of A's)."""
    rng = random.Random(seed)
    a = CallSession(SECRET, CALL_ID, caller=True, now=0.0, path="direct-udp")
    b = CallSession(SECRET, CALL_ID, caller=False, now=clock_offset, path="direct-udp")
    queue: list[tuple[float, int, str, bytes]] = []
    n = 0
    lines: list[CallStats] = []
    pending = sorted((events or {}).items())
    t = 0.0
    while t < seconds:
        while pending and pending[0][0] <= t:
            pending.pop(0)[1](a, b)
        while queue and queue[0][0] <= t:
            _, _, to, data = heapq.heappop(queue)
            (a if to == "a" else b).datagram_received(data, t + (clock_offset if to == "b"
                                                                  else 0.0))
        for side, name, net in ((a, "a", a_to_b), (b, "b", b_to_a)):
            local = t + (clock_offset if name == "b" else 0.0)
            for datagram in side.timer(local):
                delay = net(t, rng)
                if delay is not None:
                    n += 1
                    heapq.heappush(queue, (t + delay, n, "b" if name == "a" else "a", datagram))
            line = side.stats_due(local)
            if line is not None and name == "a":
                lines.append(line)
        t = round(t + 0.005, 6)
    return a, b, lines, a.finish(t), b.finish(t + clock_offset)


def test_clean_call_has_no_loss_and_top_mos() -> None:
    _, _, lines, fa, fb = simulate(10.0, link(1.0), link(1.0))
    for final in (fa, fb):
        assert final.loss_pct == 0.0 and final.late_pct == 0.0
        assert final.frames_sent == pytest.approx(500, abs=2)
        assert final.frames_received >= final.frames_sent - 3  # the last ones in flight
        assert final.mos >= 4.3
        assert final.rtt_ms is not None and 2.0 <= final.rtt_ms <= 12.0  # 5 ms steps
    assert len(lines) == 9 and [round(x.seconds) for x in lines] == list(range(1, 10))


def test_json_lines_have_the_issue_fields() -> None:
    _, _, lines, final, _ = simulate(3.0, link(5.0), link(5.0))
    for line in (*lines, final):
        wire = json.loads(json.dumps(line.to_json()))
        assert FIELDS <= set(wire)
        assert wire["final"] is (line is final)


def test_impaired_call_meets_the_direct_target() -> None:
    """40 ms one way, 1 % loss, 10 ms of jitter per link, 20 s: MOS >= 4.0 (issue 15)."""
    _, _, _, fa, fb = simulate(20.0, link(40.0, 0.01, 10.0), link(40.0, 0.01, 10.0), seed=3)
    for final in (fa, fb):
        assert 0.4 <= final.loss_pct <= 2.0
        assert final.late_pct <= 1.0
        assert 38.0 <= final.one_way_ms_p50 <= 52.0 and final.one_way_ms_p95 <= 60.0
        assert 1.0 <= final.jitter_ms <= 6.0
        assert final.mos >= 4.0


def test_relayed_call_meets_the_relayed_target() -> None:
    """Two such links (caller -> relay -> callee): MOS >= 3.8."""
    _, _, _, fa, _ = simulate(20.0, link(80.0, 0.0199, 20.0), link(80.0, 0.0199, 20.0), seed=4)
    assert fa.mos >= 3.8 and 80.0 <= fa.one_way_ms_p50 <= 100.0


def test_path_switch_continues_sequence_and_measures_the_gap() -> None:
    """The path dies at 3 s; 150 ms later a new path (relay) carries the call."""
    dead = {"on": False}
    base = link(20.0)

    def net(now: float, rng: random.Random) -> float | None:
        return None if dead["on"] else base(now, rng)

    def die(a: CallSession, b: CallSession) -> None:
        dead["on"] = True

    def move(a: CallSession, b: CallSession) -> None:
        dead["on"] = False
        a.switch_path("relay-udp", "relay1")
        b.switch_path("relay-udp", "relay1")

    _, _, lines, fa, _ = simulate(6.0, net, net, events={3.0: die, 3.15: move})
    assert fa.path == "relay-udp" and fa.relay == "relay1"
    assert 140 <= fa.gap_ms <= 200
    assert lines[1].path == "direct-udp" and lines[4].path == "relay-udp"
    assert fa.late_pct == 0.0 and 2.0 <= fa.loss_pct <= 3.5  # 150 ms of 6 s


def test_garbage_and_replays_are_counted_not_played() -> None:
    a = CallSession(SECRET, CALL_ID, caller=True, now=0.0, path="direct-udp")
    b = CallSession(SECRET, CALL_ID, caller=False, now=0.0, path="direct-udp")
    frames = a.timer(0.0)
    b.datagram_received(frames[0], 0.01)
    b.datagram_received(frames[0], 0.02)
    b.datagram_received(b"junk" * 20, 0.02)
    assert b.recv.received == 1
    assert dict(b.recv.refused) == {"replay": 1, "not a call frame": 1}


def test_late_loop_skips_frames_instead_of_bursting() -> None:
    a = CallSession(SECRET, CALL_ID, caller=True, now=0.0, path="direct-udp")
    assert len(a.timer(0.0)) == 1
    assert len(a.timer(1.0)) == 3 and a.send.skipped == 47


def test_bitrate_sets_the_payload() -> None:
    assert payload_bytes(24_000) == 60 and payload_bytes(64_000) == 160
    with pytest.raises(ValueError):
        payload_bytes(1_000_000)


def test_a_mirrored_calls_copies_and_late_frames_count_once() -> None:
    """Every frame comes twice (a call on a TCP stream with a mirror: the stream's copy in
    30 ms, the mirror's in 65 ms); the stream stalls for frames 100-109 (the mirror's copy
    comes first), both copies of 300-304 come half a second late, 400-401 are lost on both
    paths. Loss before the buffer is the 2 lost frames, late the 5 late ones (their second
    copies are replays, not a second late count), and the loss the MOS is computed from is
    those 7, once each."""
    a = CallSession(SECRET, CALL_ID, caller=True, now=0.0, path="direct-tcp")
    b = CallSession(SECRET, CALL_ID, caller=False, now=0.0, path="direct-tcp")
    b.buffer.min_target_ms = 60.0  # what StreamCall sets on a stream
    queue: list[tuple[float, int, bytes]] = []
    seq = n = 0
    t = 0.0
    while t < 12.0:
        while queue and queue[0][0] <= t:
            b.datagram_received(heapq.heappop(queue)[2], t)
        for frame in a.timer(t):
            stream, mirror = 0.030, 0.065
            if 100 <= seq < 110:
                stream = 0.400
            if 300 <= seq < 305:
                stream = mirror = 0.500
            if seq not in (400, 401):
                for delay in (stream, mirror):
                    n += 1
                    heapq.heappush(queue, (t + delay, n, frame))
            seq += 1
        b.buffer_play(t)
        t = round(t + 0.005, 6)
    for _, _, frame in sorted(queue):  # the copies still in flight come too
        b.datagram_received(frame, t)
    final = b.finish(t)
    buf = b.buffer
    assert buf.stats.late == 5 and buf.lost_before == 2 and buf.missing_after == 7
    assert buf.stats.duplicates == 0
    assert b.recv.refused["replay"] == b.recv.received  # each second copy
    assert final.late_pct == pytest.approx(500 / buf.expected, abs=0.01)
    assert final.loss_pct == pytest.approx(200 / buf.expected, abs=0.01)
    assert b.loss_pattern.received_to_lost + b.loss_pattern.lost_to_lost == 7

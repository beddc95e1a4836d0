"""The late refine's decision (overlay.client.late_refine): when a client moves nearer."""

from __future__ import annotations

import random

import pytest

from overlay.client.attach_policy import Candidate, Measurement
from overlay.client.late_refine import LateRefinePolicy, Move, Stay, decide

POLICY = LateRefinePolicy()


def cand(i: int) -> Candidate:
    return Candidate(f"198.18.0.{i}", 4000, bytes([i]) * 32, load=0, max_clients=100)


def ms(rtt: float | None, accepting: bool = True) -> Measurement:
    return Measurement(rtt, accepting, 0)


def test_moves_when_current_is_clearly_farther() -> None:
    cur, near, far = cand(1), cand(2), cand(3)
    measured = {cur.node_key: ms(0.080), near.node_key: ms(0.020), far.node_key: ms(0.150)}
    d = decide(cur, [near, far], measured, POLICY, random.Random(1))
    assert d == Move(near, 0.020, 0.080)


def test_stays_inside_the_near_band_and_its_hysteresis() -> None:
    cur, other = cand(1), cand(2)
    # the near band of 20 ms is 24 ms; with the hysteresis the move needs more than 29 ms
    for rtt in (0.021, 0.024, 0.028, 0.029):
        measured = {cur.node_key: ms(rtt), other.node_key: ms(0.020)}
        assert decide(cur, [other], measured, POLICY, random.Random(1)) == Stay("near_enough")
    measured = {cur.node_key: ms(0.0295), other.node_key: ms(0.020)}
    assert isinstance(decide(cur, [other], measured, POLICY, random.Random(1)), Move)


def test_never_flaps_back_and_forth() -> None:
    """After a move from a to b, noisy probes that make a look nearer again do not move the
    client back (a was left), nor does a probe of b within the hysteresis."""
    a, b = cand(1), cand(2)
    first = decide(a, [b], {a.node_key: ms(0.060), b.node_key: ms(0.030)}, POLICY,
                   random.Random(1))
    assert first == Move(b, 0.030, 0.060)
    noisy = {a.node_key: ms(0.010), b.node_key: ms(0.045)}
    assert decide(b, [a], noisy, POLICY, random.Random(1), left={a.node_key},
                  moves_so_far=1) == Stay("no_candidate")
    # without the memory, hysteresis alone holds for ordinary jitter
    jitter = {a.node_key: ms(0.028), b.node_key: ms(0.032)}
    assert decide(b, [a], jitter, POLICY, random.Random(1)) == Stay("near_enough")


def test_each_move_cuts_the_rtt_by_the_margin_so_moves_end() -> None:
    """Any chain of moves strictly lowers the RTT by at least the hysteresis margin, and is
    cut at max_moves (here each supernode's directory names only the next nearer one)."""
    rtts = [0.300, 0.200, 0.120, 0.070, 0.040, 0.020]
    cands = [cand(i + 1) for i in range(len(rtts))]
    measured = {c.node_key: ms(r) for c, r in zip(cands, rtts, strict=True)}
    current, left, moves = cands[0], set[bytes](), 0
    while True:
        d = decide(current, cands[moves + 1: moves + 2], measured, POLICY,
                   random.Random(moves), left=left, moves_so_far=moves)
        if isinstance(d, Stay):
            break
        assert d.target_rtt_s < d.current_rtt_s - POLICY.hysteresis_abs_s
        left.add(current.node_key)
        current, moves = d.target, moves + 1
    assert moves == POLICY.max_moves
    assert decide(current, cands, measured, POLICY, random.Random(1), left=left,
                  moves_so_far=moves) == Stay("max_moves")


def test_ignores_unanswered_full_and_unmeasured() -> None:
    cur, dead, full, unknown = cand(1), cand(2), cand(3), cand(4)
    measured = {cur.node_key: ms(0.100), dead.node_key: ms(None),
                full.node_key: ms(0.010, accepting=False)}
    assert decide(cur, [dead, full, unknown], measured, POLICY,
                  random.Random(1)) == Stay("no_candidate")
    # its own supernode did not answer the probe: the failover decides, not the refine
    assert decide(cur, [dead], {cur.node_key: ms(None)}, POLICY,
                  random.Random(1)) == Stay("current_unmeasured")


def test_target_is_drawn_from_the_near_band_by_spare_capacity() -> None:
    cur = cand(1)
    big = Candidate("198.18.0.2", 4000, b"\x02" * 32, load=0, max_clients=1000)
    small = Candidate("198.18.0.3", 4000, b"\x03" * 32, load=0, max_clients=10)
    measured = {cur.node_key: ms(0.200), big.node_key: ms(0.021), small.node_key: ms(0.020)}
    targets = [decide(cur, [big, small], measured, POLICY, random.Random(seed))
               for seed in range(200)]
    assert all(isinstance(t, Move) for t in targets)
    to_big = sum(1 for t in targets if isinstance(t, Move) and t.target == big)
    assert to_big > 180


def test_delay_is_jittered_within_the_policy() -> None:
    rng = random.Random(7)
    delays = [POLICY.delay(rng) for _ in range(1000)]
    assert min(delays) >= POLICY.delay_s
    assert max(delays) < POLICY.delay_s + POLICY.jitter_s
    assert max(delays) - min(delays) > 0.9 * POLICY.jitter_s


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LateRefinePolicy(delay_s=-1)
    with pytest.raises(ValueError):
        LateRefinePolicy(hysteresis_rel=-0.1)
    with pytest.raises(ValueError):
        LateRefinePolicy(busy_retry_s=0)

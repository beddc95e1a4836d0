"""The late refine: once Vivaldi coordinates have settled, move to a clearly nearer supernode.

Sans-IO: measurements in, a decision out (no sockets, no clock). The supervisor
(:mod:`overlay.client.supervisor`) does the I/O.

A client attaches within seconds of starting, usually before the supernodes' Vivaldi
coordinates have settled, so the "nearest first" directory answers its discovery used were
mostly chance (tools/sim, 200 supernodes: 86 % of clients within their 10 % nearest). Some
minutes after attaching (:meth:`LateRefinePolicy.delay_s`: ``delay_s`` plus a uniform
``jitter_s``, so the clients that joined together do not move together) the client asks its
supernode for the supernodes near it, probes them and its own supernode, and
:func:`decide` says whether to move:

* move only to a supernode that answered, accepts clients and was not left by an earlier
  late move (so a client never goes back and forth);
* the target is drawn like a first choice (:func:`~overlay.client.attach_policy.spread`: the
  near band by spare capacity);
* move only when the current supernode is outside the target's near band by a further
  hysteresis margin (``hysteresis_abs_s`` + ``hysteresis_rel`` x the target's RTT): probe
  noise cannot make it move, and each move cuts the RTT by at least that margin;
* at most ``max_moves`` late moves per attachment chain.

The move is make-before-break: the new attachment is made first, then the old session is
closed. It never happens while a call or transfer runs: the supervisor looks again every
``busy_retry_s``, at most ``max_busy_retries`` times, and gives the move up if one starts
while the new attachment is being made.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from overlay.client.attach_policy import NEAR_ABS_S, NEAR_REL, Candidate, Measurement, rank, spread


@dataclass(frozen=True)
class LateRefinePolicy:
    """When the late refine runs and how much nearer a supernode must be to move there."""

    enabled: bool = True
    #: after attaching: the supernodes' Vivaldi coordinates have had minutes of DHT traffic
    #: to settle (a 0.15 h tools/sim run still sees every client's late refine)
    delay_s: float = 180.0
    #: plus a uniform [0, jitter_s): the clients that joined together spread over 3 minutes
    jitter_s: float = 180.0
    hysteresis_abs_s: float = 0.003
    hysteresis_rel: float = 0.1
    max_moves: int = 3
    #: a call or transfer is running: look again after this long, at most this many times
    busy_retry_s: float = 30.0
    max_busy_retries: int = 20

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.jitter_s < 0 or self.busy_retry_s <= 0:
            raise ValueError("late refine delays must not be negative (busy retry positive)")
        if self.hysteresis_abs_s < 0 or self.hysteresis_rel < 0 or self.max_moves < 0:
            raise ValueError("late refine hysteresis and moves must not be negative")

    def delay(self, rng: random.Random) -> float:
        """Seconds from attaching to the late refine."""
        return self.delay_s + self.jitter_s * rng.random()

    def move_threshold_s(self, target_rtt_s: float) -> float:
        """The current supernode's RTT above which a move to ``target_rtt_s`` is worth it."""
        return (target_rtt_s * (1.0 + NEAR_REL + self.hysteresis_rel)
                + NEAR_ABS_S + self.hysteresis_abs_s)


@dataclass(frozen=True)
class Stay:
    reason: str


@dataclass(frozen=True)
class Move:
    target: Candidate
    target_rtt_s: float
    current_rtt_s: float


Decision = Stay | Move


def decide(
    current: Candidate,
    candidates: Sequence[Candidate],
    measured: Mapping[bytes, Measurement],
    policy: LateRefinePolicy,
    rng: random.Random,
    *,
    left: Collection[bytes] = (),
    moves_so_far: int = 0,
) -> Decision:
    """Whether to move from ``current`` to one of ``candidates``, from ``measured`` (probes
    of them and of ``current`` taken together). ``left``: supernodes a late move left."""
    if moves_so_far >= policy.max_moves:
        return Stay("max_moves")
    mine = measured.get(current.node_key)
    if mine is None or mine.rtt_s is None:
        return Stay("current_unmeasured")  # a lost supernode is the failover's business
    exclude = set(left) | {current.node_key}
    ranked = spread(rank(candidates, measured, exclude=exclude, rng=rng), measured, rng)
    if not ranked:
        return Stay("no_candidate")
    target = ranked[0]
    target_rtt = measured[target.node_key].rtt_s
    assert target_rtt is not None
    if mine.rtt_s <= policy.move_threshold_s(target_rtt):
        return Stay("near_enough")
    return Move(target, target_rtt, mine.rtt_s)

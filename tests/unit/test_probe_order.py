"""A client probes the supernodes nearest to *itself* first, not only those its supernode
lists (nearest to that supernode), and places itself from its measured round trips."""

from __future__ import annotations

import math
import random

from overlay.client.attach_policy import Candidate
from overlay.client.probe_order import estimated_nearest, probe_order
from overlay.core.vivaldi import Coordinate, fit


def cand(i: int) -> Candidate:
    return Candidate(f"198.18.0.{i}", 4000, bytes([i]) * 32)


def world(rng: random.Random, n: int = 60) -> dict[bytes, Coordinate]:
    """Supernodes on two continents 0.2 s apart, with access delays of 2-10 ms."""
    out = {}
    for i in range(1, n + 1):
        cx = 0.0 if i % 2 else 0.2
        out[cand(i).node_key] = Coordinate(cx + rng.gauss(0, 0.02), rng.gauss(0, 0.02),
                                           rng.uniform(0.002, 0.01), 0.2)
    return out


def test_a_client_is_placed_near_where_its_round_trips_say() -> None:
    rng = random.Random(7)
    coords = world(rng)
    me = Coordinate(0.21, 0.01, 0.005, 0.0)
    rtts = {k: me.distance(c) for k, c in list(coords.items())[:8]}
    placed = fit([(coords[k], r) for k, r in rtts.items()], random.Random(1))
    assert placed is not None
    errors = [abs(placed.distance(c) - me.distance(c)) / me.distance(c)
              for c in coords.values()]
    assert sorted(errors)[len(errors) // 2] < 0.25, "predicted RTTs are off by a quarter"


def test_no_position_from_fewer_than_three_landmarks() -> None:
    coords = world(random.Random(3))
    two = list(coords.items())[:2]
    assert fit([(c, 0.05) for _, c in two]) is None
    assert estimated_nearest([cand(i) for i in range(1, 61)], coords,
                             {k: 0.05 for k, _ in two}, random.Random(1)) == []


def test_the_estimate_finds_the_nearest_that_the_far_supernodes_list_does_not_hold() -> None:
    rng = random.Random(11)
    coords = world(rng)
    cands = [cand(i) for i in range(1, 61)]
    me = Coordinate(0.2, 0.0, 0.004, 0.0)  # on the second continent (even i)
    # attached on the first continent: its supernode lists its own neighbours (odd i) first
    attached_to = coords[cand(1).node_key]
    listed = sorted(cands, key=lambda c: attached_to.distance(coords[c.node_key]))[:20]
    assert all(i % 2 for i in (c.node_key[0] for c in listed[:15]))
    # the client measured its supernode, two listed ones and a few from its host cache
    measured = [cand(1), cand(3), cand(5), cand(2), cand(8)]
    rtts = {c.node_key: me.distance(coords[c.node_key]) for c in measured}
    order = probe_order(listed, estimated_nearest(cands, coords, rtts, random.Random(2)))
    truly_nearest = sorted(cands, key=lambda c: me.distance(coords[c.node_key]))[:6]
    probed = {c.node_key for c in order[:15]}
    assert sum(c.node_key in probed for c in truly_nearest) >= 5
    # the listing alone would have probed none of them
    assert not {c.node_key for c in truly_nearest} & {c.node_key for c in listed[:15]}


def test_probe_order_alternates_and_names_each_candidate_once() -> None:
    a, b, c, d = cand(1), cand(2), cand(3), cand(4)
    assert probe_order([a, b, c], [c, d]) == [c, a, d, b]
    assert probe_order([a, b], []) == [a, b]
    assert probe_order([], [b, a]) == [b, a]


def test_implausible_round_trips_are_not_landmarks() -> None:
    coords = world(random.Random(5))
    samples = [(c, math.inf) for c in list(coords.values())[:5]]
    assert fit(samples) is None

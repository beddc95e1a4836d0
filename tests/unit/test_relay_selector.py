"""Relay ranking and Vivaldi coordinates (sans-IO)."""

import random

from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.vivaldi import Coordinate, CoordinateKeeper, for_prediction, update
from overlay.media import relay_selector as rs


def relay(x: float, spare: int = 10**6, capacity: int = 2 * 10**6, key: bytes | None = None):
    return rs.RelayCandidate(key or Identity.generate().public_key, "198.18.0.9", 4000,
                             capacity, spare, Coordinate(x, 0.0, 0.001, 0.1))


def test_candidates_need_spare_budget_and_a_live_record():
    ids = [Identity.generate() for _ in range(3)]
    found = [
        records.supernode(ids[0], "198.18.0.1", 4000, seq=1, relay_capacity_bps=2_000_000,
                          relay_spare_bps=1_000_000),
        records.supernode(ids[1], "198.18.0.2", 4000, seq=1, relay_capacity_bps=2_000_000,
                          relay_spare_bps=100_000),
        records.supernode(ids[2], "198.18.0.3", 4000, seq=1),  # relaying disabled
    ]
    chosen = rs.candidates(found, rate_bps=500_000)
    assert [c.node_key for c in chosen] == [ids[0].public_key]


def test_rank_prefers_short_paths_then_avoids_recent_failures():
    near, far = relay(0.01), relay(0.2)
    callee = Coordinate(0.0, 0.0, 0.001, 0.1)
    history = rs.RelayHistory()
    args = {"caller_rtt": {}, "caller_coords": callee, "callee_coords": callee,
            "callee_supernode": b"", "history": history}
    assert rs.rank([far, near], **args) == [near, far]
    history.failed(near.node_key)
    assert rs.rank([far, near], **args) == [far, near]
    assert rs.rank([far, near], **args, exclude={far.node_key}) == [near]


def test_for_a_call_latency_decides_first_then_spare_budget():
    callee = Coordinate(0.0, 0.0, 0.001, 0.1)
    args = {"caller_rtt": {}, "caller_coords": callee, "callee_coords": callee,
            "callee_supernode": b"", "history": rs.RelayHistory(), "call": True}
    near_full = relay(0.020, spare=100_000)
    near_spare = relay(0.022, spare=1_900_000)   # 4 ms further: the same latency step
    far_spare = relay(0.060, spare=2_000_000)
    # equally near: the one with more spare budget first; nearer always beats more spare
    assert rs.rank([far_spare, near_full, near_spare], **args) == \
        [near_spare, near_full, far_spare]
    # a file ranks by latency plus a load penalty: the near, nearly full relay is not first
    del args["call"]
    assert rs.rank([far_spare, near_full, near_spare], **args)[0] == near_spare
    assert rs.rank([near_full, relay(0.020, spare=0)], **args)[0] == near_full
    # a recent failure counts against latency for calls too
    history = rs.RelayHistory()
    history.failed(near_spare.node_key)
    assert rs.rank([near_spare, far_spare], **{**args, "history": history, "call": True}) == \
        [far_spare, near_spare]


def test_measured_caller_leg_beats_estimates_and_callee_supernode_is_free():
    a, b = relay(0.05), relay(0.05)
    args = {"caller_coords": None, "callee_coords": None, "history": rs.RelayHistory()}
    ranked = rs.rank([a, b], caller_rtt={a.node_key: 0.3, b.node_key: 0.01},
                     callee_supernode=b"", **args)
    assert ranked[0] is b
    ranked = rs.rank([a, b], caller_rtt={}, callee_supernode=a.node_key, **args)
    assert ranked[0] is a


def test_tokens_differ_per_relay_and_need_the_secret():
    secret = b"s" * 32
    assert rs.session_token(secret, b"a" * 32) != rs.session_token(secret, b"b" * 32)
    assert rs.session_token(secret, b"a" * 32) != rs.session_token(b"t" * 32, b"a" * 32)


def test_vivaldi_coordinates_converge_to_predict_rtts():
    rng = random.Random(3)
    true_pos = {n: (rng.uniform(0, 0.1), rng.uniform(0, 0.1)) for n in range(8)}

    def rtt(a: int, b: int) -> float:
        (xa, ya), (xb, yb) = true_pos[a], true_pos[b]
        return ((xa - xb) ** 2 + (ya - yb) ** 2) ** 0.5 + 0.002

    coords = {n: Coordinate() for n in true_pos}
    for _ in range(3000):
        a, b = rng.sample(list(true_pos), 2)
        coords[a] = update(coords[a], coords[b], rtt(a, b), rng)
    errors = [abs(coords[a].distance(coords[b]) - rtt(a, b)) / rtt(a, b)
              for a in true_pos for b in true_pos if a != b]
    assert sorted(errors)[len(errors) // 2] < 0.25  # median relative error
    assert Coordinate.from_record(coords[0].to_record()) is not None
    assert Coordinate.from_record((1e9, 0.0, 0.0, 0.1)) is None


def test_one_delayed_answer_does_not_throw_a_coordinate_off():
    peer = Coordinate(0.0, 0.0, 0.001, 0.05)
    keeper = CoordinateKeeper(random.Random(1))
    for _ in range(50):
        keeper.observe(b"peer", peer, 0.040)
    settled = keeper.coord.distance(peer)
    assert abs(settled - 0.040) < 0.004
    keeper.observe(b"peer", peer, 0.900)  # a busy event loop answered late
    assert abs(keeper.coord.distance(peer) - settled) < 0.002
    assert for_prediction(keeper.coord.to_record()) is not None
    assert for_prediction(Coordinate().to_record()) is None  # knows nothing yet

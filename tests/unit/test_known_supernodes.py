"""The supernodes a public node knows and hands to clients (sans-IO): merged over directory
reads, bounded with the nearest kept, samples nearest to the node first, full ones last."""

from __future__ import annotations

import random

from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.records import SignedRecord
from overlay.core.vivaldi import Coordinate
from overlay.node.known_supernodes import KnownSupernodes

T0 = 1_800_000_000.0
HERE = Coordinate(0.0, 0.0, 0.001, 0.1)


def at(x: float, i: int, lifetime_s: float = 600, load: int = 0, seq: int = 1,
       identity: Identity | None = None) -> SignedRecord:
    """A supernode record whose coordinate is ``x`` seconds away on one axis."""
    return records.supernode(identity or Identity.generate(), f"198.51.{i // 250}.{i % 250 + 1}",
                             4000, seq=seq, coords=(x, 0.0, 0.001, 0.1), load=load,
                             max_clients=10, lifetime_s=lifetime_s, now=T0)


def key(signed: SignedRecord) -> bytes:
    return signed.record.node_key  # type: ignore[union-attr]


def test_reads_are_merged_newest_per_supernode_and_expired_ones_dropped() -> None:
    known = KnownSupernodes()
    me = Identity.generate()
    short = at(0.05, 1, lifetime_s=60)
    known.add([at(0.01, 0, identity=me), short], T0, HERE, random.Random(1))
    newer = at(0.02, 2, identity=me, seq=2)
    known.add([newer, at(0.03, 3)], T0 + 30, HERE, random.Random(1))
    assert len(known) == 3 and known.records[me.public_key] is newer
    known.add([], T0 + 61, HERE, random.Random(1))
    assert key(short) not in known.records and len(known) == 2


def test_a_sample_is_nearest_first_then_chance_and_full_ones_last() -> None:
    known = KnownSupernodes()
    far = [at(0.1 + i / 100, i) for i in range(20)]
    near = [at(0.001 * (i + 1), 100 + i) for i in range(4)]
    full = at(0.0, 200, load=10)  # nearest of all, but full by its record
    known.add([*far, *near, full], T0, HERE, random.Random(2))
    sample = known.sample(8, T0, HERE, random.Random(3))
    assert [key(s) for s in sample[:4]] == [key(s) for s in near]
    assert key(full) not in {key(s) for s in sample}
    everything = known.sample(100, T0, HERE, random.Random(3))
    assert key(everything[-1]) == key(full)
    # without a coordinate (a bootstrap node): chance only, so clients spread
    firsts = {key(known.sample(1, T0, None, random.Random(seed))[0]) for seed in range(20)}
    assert len(firsts) > 5


def test_the_bound_keeps_the_nearest_half_and_a_random_rest() -> None:
    known = KnownSupernodes(max_known=10)
    near = [at(0.001 * (i + 1), i) for i in range(5)]
    far = [at(1.0 + i / 10, 50 + i) for i in range(40)]
    known.add([*far, *near], T0, HERE, random.Random(4))
    assert len(known) == 10
    assert {key(s) for s in near} <= set(known.records)

"""The supernode directory at a holder (sans-IO): listed only after a dial-back, bounded
waiting pool, per-/24 caps, dial-back budgets, answers spread over networks."""

from __future__ import annotations

import random

import pytest

from overlay.core import records
from overlay.core.directory_keys import SHARD_KEYS, directory_key
from overlay.core.identity import Identity
from overlay.core.records import SignedRecord, StorageFull
from overlay.dht.directory import DialBack, DirectoryLimits, choose
from overlay.dht.fairness import QuotaExceeded
from overlay.dht.storage import RecordStorage, StorageLimits

T0 = 1_800_000_000.0
#: the shard key the tests' supernodes share (each key's caps are its own)
KEY = SHARD_KEYS[0]


def nets_in(key: bytes, n: int) -> list[str]:
    """``n`` public IPv4 /24s ("a.b.c") whose supernodes go under ``key``."""
    found = [f"45.{b}.{c}" for b in range(256) for c in range(256)
             if directory_key(f"45.{b}.{c}.1") == key]
    return found[:n]


#: /24s in KEY's shard: N[0] stands for one network, N[1:] for others
N = nets_in(KEY, 12)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def holder(own: str = "203.0.113.1", **limits: int | float) -> tuple[RecordStorage, Clock]:
    clock = Clock()
    storage = RecordStorage(StorageLimits(directory=DirectoryLimits(**limits)), clock=clock)
    storage.directory.enable_dial_backs(own)
    return storage, clock


def supernode(host: str, port: int = 4000, identity: Identity | None = None, seq: int = 1
              ) -> SignedRecord:
    return records.supernode(identity or Identity.generate(), host, port, seq=seq,
                             lifetime_s=3600, now=T0)


def served(storage: RecordStorage) -> set[bytes]:
    return {s.record.node_key for s in storage.answer(KEY, 48)}  # type: ignore[union-attr]


def dial_all(storage: RecordStorage, clock: Clock, proven: bool = True) -> list[DialBack]:
    """Every dial-back due now, each ending with ``proven``."""
    done: list[DialBack] = []
    while dials := storage.directory.dials_due(clock.now):
        for dial in dials:
            storage.directory.dial_done(dial, proven, clock.now)
        done += dials
    return done


def test_a_record_is_served_only_after_its_address_proved_its_key() -> None:
    storage, clock = holder()
    rec = supernode(f"{N[0]}.7")
    storage.put(KEY, rec.wire, source="192.0.2.1")
    assert served(storage) == set() and storage.values(KEY) == []
    (dial,) = storage.directory.dials_due(clock.now)
    assert dial == DialBack(rec.record.node_key, f"{N[0]}.7", 4000)  # type: ignore[union-attr]
    storage.directory.dial_done(dial, True, clock.now)
    assert served(storage) == {rec.record.node_key}  # type: ignore[union-attr]


def test_a_failed_dial_back_is_retried_later_and_a_listed_record_re_verified() -> None:
    storage, clock = holder(retry_s=300, reverify_s=1800)
    rec = supernode(f"{N[0]}.7")
    storage.put(KEY, rec.wire, source="192.0.2.1")
    dial_all(storage, clock, proven=False)
    assert served(storage) == set()
    assert storage.directory.get_timer() == T0 + 300
    clock.now += 300
    dial_all(storage, clock, proven=True)
    assert len(served(storage)) == 1
    assert storage.directory.get_timer() == clock.now + 1800
    clock.now += 1800
    dial_all(storage, clock, proven=False)  # the address no longer answers with the key
    assert served(storage) == set()


def test_own_records_are_listed_without_a_dial_back() -> None:
    storage, clock = holder()
    rec = supernode(f"{N[0]}.1")
    storage.put(KEY, rec.wire)  # this node's own publish
    assert len(served(storage)) == 1
    assert storage.directory.dials_due(clock.now) == []


def test_a_refresh_keeps_the_proof_a_new_address_needs_a_new_one() -> None:
    storage, clock = holder()
    me = Identity.generate()
    storage.put(KEY, supernode(f"{N[0]}.7", identity=me).wire, source="192.0.2.1")
    dial_all(storage, clock)
    storage.put(KEY, supernode(f"{N[0]}.7", identity=me, seq=2).wire, source="192.0.2.1")
    assert served(storage) == {me.public_key}
    storage.put(KEY, supernode(f"{N[0]}.8", identity=me, seq=3).wire, source="192.0.2.1")
    assert served(storage) == set()
    (dial,) = dial_all(storage, clock)
    assert dial.host == f"{N[0]}.8" and served(storage) == {me.public_key}


def test_at_most_n_listed_per_network_and_standby_takes_a_freed_place() -> None:
    storage, clock = holder(listed_per_network=4, target_dial_burst=8)
    recs = [supernode(f"{N[0]}.{i}") for i in range(1, 7)]
    for rec in recs:
        storage.put(KEY, rec.wire, source="192.0.2.1")
    dial_all(storage, clock)
    assert len(served(storage)) == 4
    assert storage.directory.counts() == {"listed": 4, "standby": 2}
    first = next(s for s in storage.answer(KEY, 48))
    storage._evict((KEY, first.slot))
    assert len(served(storage)) == 4 and storage.directory.counts()["standby"] == 1


def test_the_waiting_pool_is_bounded_per_source_network_and_in_all() -> None:
    storage, _ = holder(waiting_per_source=3, max_waiting=6)
    for i in range(3):
        storage.put(KEY, supernode(f"{N[0]}.{i + 1}").wire, source="192.0.2.1")
    with pytest.raises(QuotaExceeded):
        storage.put(KEY, supernode(f"{N[0]}.9").wire, source="192.0.2.2")  # same /24
    for i in range(3):
        storage.put(KEY, supernode(f"{N[1]}.{i + 1}").wire, source=f"192.0.{3 + i}.1")
    # full: a newcomer from a network holding none pushes out the crowded network's newest
    newcomer = supernode(f"{N[2]}.1")
    storage.put(KEY, newcomer.wire, source="192.0.9.1")
    assert storage.directory.stats.refused["pushed_out"] == 1
    assert len(storage.data[KEY]) == 6
    # a newcomer from a network holding as many as the most crowded one is refused
    with pytest.raises(StorageFull):
        storage.put(KEY, supernode(f"{N[3]}.1").wire, source="192.0.2.50")


def test_a_network_at_its_quota_makes_room_with_its_records_found_wanting() -> None:
    storage, clock = holder(waiting_per_source=3, target_dial_burst=8)
    junk = [supernode(f"{N[0]}.{i + 1}") for i in range(3)]
    for rec in junk:  # e.g. spoofed from the honest supernode's /24
        storage.put(KEY, rec.wire, source="192.0.2.1")
    honest = supernode(f"{N[0]}.99")
    with pytest.raises(QuotaExceeded):  # none has been dialled yet
        storage.put(KEY, honest.wire, source="192.0.2.2")
    dial_all(storage, clock, proven=False)
    storage.put(KEY, honest.wire, source="192.0.2.2")  # pushes out a failed one
    assert len(storage.data[KEY]) == 3
    dial_all(storage, clock, proven=True)
    assert served(storage) == {honest.record.node_key}  # type: ignore[union-attr]


def test_dial_backs_are_budgeted_per_target_network_and_in_flight() -> None:
    storage, clock = holder(dials_in_flight=4, target_dial_burst=2, target_dials_per_s=0.2,
                            listed_per_network=2)
    for i in range(8):
        storage.put(KEY, supernode(f"{N[0]}.{i + 1}").wire, source=f"192.0.{i}.1")
    dials = storage.directory.dials_due(clock.now)
    assert len(dials) == 2  # the target /24's burst; the others wait 5 s
    assert storage.directory.stats.dials["deferred"] == 6
    for i in range(8):
        storage.put(KEY, supernode(f"{N[4 + i]}.9").wire, source=f"192.0.{i}.2")
    assert len(storage.directory.dials_due(clock.now)) == 2  # 4 in flight at most
    assert storage.directory.dials_due(clock.now) == []


def test_only_addresses_of_the_holders_own_scope_or_public_ones_are_dialled() -> None:
    public, clock = holder("203.0.113.1")
    for host in ("127.0.0.1", "10.1.2.3", "0.0.0.0", "224.0.0.1", "169.254.1.1"):
        rec = supernode(host)
        public.put(rec.dht_key, rec.wire, source="192.0.2.1")
    assert public.directory.dials_due(clock.now) == []
    assert public.directory.stats.dials["undialable"] == 5
    loopback, _ = holder("127.5.5.5")
    rec = supernode("127.6.6.6")
    loopback.put(rec.dht_key, rec.wire, source="127.0.0.1")
    assert len(loopback.directory.dials_due(clock.now)) == 1
    bare = RecordStorage(clock=clock)  # a DHT node without dial-backs serves none of these
    bare.put(KEY, supernode(f"{N[0]}.1").wire, source="192.0.2.1")
    assert bare.directory.dials_due(clock.now) == [] and served(bare) == set()
    bare.directory.enable_dial_backs("203.0.113.1")  # ... until its dial-backs start
    assert len(bare.directory.dials_due(clock.now)) == 1


def test_answers_spread_over_networks_longest_listed_first() -> None:
    storage, clock = holder(listed_per_network=4)
    crowded = [supernode(f"{N[0]}.{i}") for i in range(1, 5)]
    for rec in crowded:
        storage.put(KEY, rec.wire, source="192.0.2.1")
    dial_all(storage, clock)
    clock.now += 3600 * 0.5
    others = [supernode(f"{N[1 + i]}.1") for i in range(4)]
    for i, rec in enumerate(others):
        storage.put(KEY, rec.wire, source=f"192.0.{3 + i}.1")
    dial_all(storage, clock)
    answer = storage.answer(KEY, 48)
    nets = [s.record.host.rsplit(".", 1)[0] for s in answer]  # type: ignore[union-attr]
    assert len(set(nets[:5])) == 5, nets  # one per network first
    assert nets[0] == N[0]  # listed longest
    assert len(storage.answer(KEY, 3)) == 3


def test_readers_use_records_two_holders_list() -> None:
    honest = [supernode(f"{N[i]}.1") for i in range(3)]
    own = supernode("198.51.200.1")  # listed only by the one holder that made it
    holders = {b"a" * 20: tuple(honest), b"b" * 20: tuple(honest[:2]),
               b"m" * 20: (honest[0], own)}
    chosen = choose([*honest, own], holders, 4, 32, random.Random(1))
    assert {s.slot for s in chosen} == {s.slot for s in honest[:2]}
    alone = choose([*honest, own], {b"m" * 20: (*honest, own)}, 4, 32, random.Random(1))
    assert len(alone) == 4  # a single holder's answer is all there is


def test_each_shard_key_has_its_own_cap_and_every_shard_is_listed() -> None:
    """Under a per-key cap of 2, three shards of 3 supernodes each (on 3 /24s of the shard):
    2 listed per key (the cap), 6 in all, where one key (the old directory) would list 2."""
    storage, clock = holder(max_listed=2, listed_per_network=4)
    for shard in range(3):
        key = SHARD_KEYS[shard]
        for i, net in enumerate(nets_in(key, 3)):
            rec = supernode(f"{net}.1")
            with pytest.raises(records.WrongKey):
                storage.put(SHARD_KEYS[shard + 1], rec.wire, source="192.0.2.1")
            storage.put(key, rec.wire, source=f"192.0.{i}.1")
    dial_all(storage, clock)
    assert storage.directory.counts() == {"listed": 6, "standby": 3}
    assert storage.directory.per_key() == {SHARD_KEYS[s]: 3 for s in range(3)}
    for shard in range(3):
        answer = storage.answer(SHARD_KEYS[shard], 48)
        assert len(answer) == 2
        assert all(s.dht_key == SHARD_KEYS[shard] for s in answer)


def test_a_supernodes_shard_is_its_networks() -> None:
    assert directory_key("198.51.100.7") == directory_key("198.51.100.200")
    assert directory_key("2001:db8:1:2::1") == directory_key("2001:db8:1:ffff::9")
    shards = {directory_key(f"45.{b}.{c}.1") for b in range(16) for c in range(256)}
    assert len(shards) == len(SHARD_KEYS)  # 4,096 networks reach every shard


def test_a_supernode_that_moves_network_is_listed_under_each_key_until_the_old_goes() -> None:
    storage, clock = holder()
    me = Identity.generate()
    old = supernode(f"{N[0]}.7", identity=me)
    storage.put(old.dht_key, old.wire, source="192.0.2.1")
    dial_all(storage, clock)
    moved = records.supernode(me, "198.51.100.7", 4000, seq=2, lifetime_s=7200, now=T0)
    assert moved.dht_key != old.dht_key
    storage.put(moved.dht_key, moved.wire, source="192.0.2.1")
    dial_all(storage, clock)
    assert [s.seq for s in storage.answer(moved.dht_key, 48)] == [2]
    clock.now += 3601  # the old record expires where it was
    storage.cull()
    assert storage.answer(old.dht_key, 48) == []
    assert [s.seq for s in storage.answer(moved.dht_key, 48)] == [2]

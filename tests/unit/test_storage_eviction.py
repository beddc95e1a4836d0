"""Storage fairness, sans-IO: source networks, quotas and the eviction order."""

from __future__ import annotations

import pytest

from overlay.core import records
from overlay.core.identity import Identity
from overlay.dht.fairness import QuotaExceeded, source_group
from overlay.dht.storage import RecordStorage, StorageLimits


def presence(identity: Identity, name: str, seq: int = 1) -> records.SignedRecord:
    return records.presence(identity, name, "d", seq=seq, online=False)


def put(storage: RecordStorage, signed: records.SignedRecord, ip: str | None) -> None:
    storage.put(signed.dht_key, signed.wire, source=ip)


def held(storage: RecordStorage, signed: records.SignedRecord) -> bool:
    return signed.wire in [s.wire for s in storage.values(signed.dht_key)]


def test_source_networks():
    assert source_group("192.0.2.77") == "192.0.2.0/24"
    assert source_group("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert source_group("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert source_group(None) == "local"


def test_one_signer_is_held_to_its_quota():
    storage = RecordStorage()
    mallory = Identity.generate()
    limit = storage.limits.max_entries_per_signer
    for i in range(limit):
        put(storage, presence(mallory, f"m{i}"), "198.18.0.1")
    with pytest.raises(QuotaExceeded):
        put(storage, presence(mallory, "one-more"), "198.18.0.1")
    assert storage.stats.rejected["quota"] == 1
    put(storage, presence(mallory, "m0", seq=2), "198.18.0.1")  # a refresh still fits


def test_one_network_is_held_to_its_quota_and_local_stores_are_not():
    storage = RecordStorage(StorageLimits(max_entries_per_source=5))
    for i in range(5):
        put(storage, presence(Identity.generate(), f"f{i}"), f"198.18.0.{i + 1}")
    with pytest.raises(QuotaExceeded):
        put(storage, presence(Identity.generate(), "f5"), "198.18.0.200")
    put(storage, presence(Identity.generate(), "other"), "198.18.1.1")
    put(storage, presence(Identity.generate(), "mine"), None)


def test_a_full_node_evicts_the_crowding_networks_newest_records():
    storage = RecordStorage(StorageLimits(max_entries=10))
    alice = Identity.generate()
    first = presence(alice, "alice")
    put(storage, first, "198.18.5.1")
    filler = [presence(Identity.generate(), f"f{i}") for i in range(30)]
    taken = []
    for signed in filler:
        try:
            put(storage, signed, "198.18.9.1")
            taken.append(signed)
        except records.StorageFull:
            pass  # the filler's own network is the most represented: no churn
    assert len(taken) == 9 and storage.stats.evicted == 0
    claim = records.name_claim(alice, "alice", seq=1)
    put(storage, claim, "198.18.5.1")
    assert held(storage, first) and held(storage, claim)
    assert not held(storage, taken[-1])  # the newest arrival of the crowding network went
    assert all(held(storage, s) for s in taken[:-1])
    assert storage.stats.evicted == 1 and storage.entry_count == 10


def test_filler_from_many_networks_never_pushes_out_an_earlier_record():
    storage = RecordStorage(StorageLimits(max_entries=20))
    alice = Identity.generate()
    first = presence(alice, "alice")
    put(storage, first, "198.18.5.1")
    for i in range(200):
        try:
            put(storage, presence(Identity.generate(), f"f{i}"), f"198.19.{i}.1")
        except records.StorageFull:
            pass
    assert held(storage, first)
    assert storage.entry_count <= 20 and storage.stats.evicted > 100


def test_name_records_of_a_network_within_its_fair_share_are_kept():
    storage = RecordStorage(StorageLimits(max_entries=6))
    # network A: three users' presence records (each the longest-held under its name)
    users = [presence(Identity.generate(), f"u{i}") for i in range(3)]
    for signed in users:
        put(storage, signed, "198.18.1.1")
    # network B: two, then a third from C fills the node
    for i in range(2):
        put(storage, presence(Identity.generate(), f"b{i}"), "198.18.2.1")
    put(storage, presence(Identity.generate(), "c0"), "198.18.3.1")
    # a newcomer from C: A is the most represented and over its fair share (6 / 3 = 2), so
    # A's newest goes, although it is the only presence record of its name
    put(storage, presence(Identity.generate(), "c1"), "198.18.3.1")
    assert not held(storage, users[-1]) and held(storage, users[0])


def test_protected_records_stay_when_no_network_is_over_its_share():
    storage = RecordStorage(StorageLimits(max_entries=4))
    a = [presence(Identity.generate(), f"a{i}") for i in range(2)]
    b = [presence(Identity.generate(), f"b{i}") for i in range(2)]
    for signed in a:
        put(storage, signed, "198.18.1.1")
    for signed in b:
        put(storage, signed, "198.18.2.1")
    # every network holds its fair share (4 / 2): names are kept, the newcomer is refused
    with pytest.raises(records.StorageFull):
        put(storage, presence(Identity.generate(), "late"), None)
    assert all(held(storage, s) for s in a + b)


def test_records_stored_locally_are_never_evicted_and_refreshes_keep_their_age():
    storage = RecordStorage(StorageLimits(max_entries=5))
    own = presence(Identity.generate(), "own")
    put(storage, own, None)
    alice = Identity.generate()
    put(storage, presence(alice, "alice"), "198.18.1.1")
    others = [presence(Identity.generate(), f"o{i}") for i in range(2)]
    for signed in others:
        put(storage, signed, "198.18.1.1")
    put(storage, presence(Identity.generate(), "b"), "198.18.2.1")
    refreshed = presence(alice, "alice", seq=2)
    put(storage, refreshed, "198.18.7.7")  # a refresh keeps its network and its age
    with pytest.raises(records.StorageFull):
        put(storage, presence(Identity.generate(), "x"), "198.18.1.1")
    put(storage, presence(Identity.generate(), "y"), "198.18.3.1")  # 1.x is over 5 / 3
    assert held(storage, own) and held(storage, refreshed) and held(storage, others[0])
    assert not held(storage, others[1])
    assert storage.ledger.sources["198.18.1.0/24"][0] == 2
    assert "198.18.7.0/24" not in storage.ledger.sources


def test_a_node_full_of_bytes_evicts_too():
    probe = presence(Identity.generate(), "p0000")
    size = len(probe.wire)
    storage = RecordStorage(StorageLimits(max_bytes=size * 4 + size // 2))
    filler = [presence(Identity.generate(), f"f{i:04d}") for i in range(4)]
    for signed in filler:
        put(storage, signed, "198.18.9.1")
    put(storage, probe, "198.18.5.1")
    assert held(storage, probe) and not held(storage, filler[-1])
    assert storage.byte_count <= storage.limits.max_bytes

"""Every kind of bad record is refused with a typed error and leaves stored state unchanged:
directly at a node's storage, and over the network through a store request."""

from __future__ import annotations

import time

import msgpack
import pytest

from overlay.core import records
from overlay.core.directory_keys import directory_key
from overlay.core.identity import Identity
from overlay.dht.storage import RecordStorage
from tests.helpers.netutil import Network

ALICE = Identity.generate()
MALLORY = Identity.generate()
SUPERNODE = Identity.generate()


def presence(identity: Identity, user: str = "alice", seq: int = 1, **kw) -> records.SignedRecord:
    return records.presence(
        identity, user, kw.pop("device", "phone"), seq=seq, supernode_key=SUPERNODE.public_key,
        supernode_host="198.18.0.10", supernode_port=4000, **kw,
    )


def resign(body_fields: list, identity: Identity) -> bytes:
    body = msgpack.packb([records.FORMAT_VERSION, 1, *body_fields], use_bin_type=True)
    sig = identity.sign(records.SIGNING_DOMAIN + body)
    return msgpack.packb([body, sig], use_bin_type=True)


def bad_signature() -> bytes:
    good = presence(ALICE, seq=9)
    body, sig = msgpack.unpackb(good.wire)
    return msgpack.packb([body, bytes([sig[0] ^ 1]) + sig[1:]], use_bin_type=True)


def oversized() -> bytes:
    fields = presence(ALICE, seq=9).record.fields()
    fields[7] = [f"capability-{i:02d}-padding-xxxxxx" for i in range(40)]
    return resign(fields, ALICE)


def non_canonical() -> bytes:
    good = presence(ALICE, seq=9)
    body, _sig = msgpack.unpackb(good.wire)
    # same values, but the body's seq is encoded as a wider integer than needed
    values = msgpack.unpackb(body)
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack(v) for v in values]
    parts[10] = b"\xcf" + values[10].to_bytes(8, "big")  # seq as uint64
    wide = b"\x9d" + b"".join(parts)
    return msgpack.packb([wide, ALICE.sign(records.SIGNING_DOMAIN + wide)], use_bin_type=True)


def long_lived() -> bytes:
    fields = presence(ALICE, seq=50).record.fields()
    fields[10] = fields[9] + 7 * 86400.0  # expires_at a week after issued_at
    return resign(fields, ALICE)


def claim_wire(fields: list, identity: Identity) -> bytes:
    body = msgpack.packb([records.FORMAT_VERSION, int(records.RecordKind.NAME_CLAIM), *fields],
                         use_bin_type=True)
    return msgpack.packb([body, identity.sign(records.SIGNING_DOMAIN + body)],
                         use_bin_type=True)


def long_claim() -> bytes:
    fields = records.name_claim(ALICE, "alice", seq=50).record.fields()
    fields[4] = fields[3] + 33 * 86400.0
    return claim_wire(fields, ALICE)


def int_time_claim() -> bytes:
    fields = records.name_claim(ALICE, "alice", seq=50).record.fields()
    fields[3] = int(fields[3])
    return claim_wire(fields, ALICE)


def long_presence() -> bytes:
    fields = presence(ALICE, seq=50).record.fields()
    fields[10] = fields[9] + records.NAME_CLAIM_LIFETIME_S
    return resign(fields, ALICE)


BAD_RECORDS = {
    "bad signature": (bad_signature, records.BadSignature),
    "signed by a key other than the name's owner": (
        lambda: presence(MALLORY, seq=100).wire, records.NameClaimed),
    "older sequence number": (lambda: presence(ALICE, seq=4).wire, records.StaleSequence),
    "same sequence, other content": (
        lambda: presence(ALICE, seq=5, capabilities=("x",)).wire, records.StaleSequence),
    "expired": (lambda: presence(ALICE, seq=50, now=time.time() - 1000).wire,
                records.ExpiredRecord),
    "from too far in the future": (lambda: presence(ALICE, seq=50, now=time.time() + 600).wire,
                                   records.FutureRecord),
    "lifetime too long": (long_lived, records.LifetimeTooLong),
    "oversized": (oversized, records.OversizedRecord),
    "not a record: junk bytes": (lambda: b"\x00hello world", records.MalformedRecord),
    "not a record: a msgpack map": (lambda: msgpack.packb({"value": [1, 2]}),
                                    records.MalformedRecord),
    "not a record: an array of junk": (lambda: msgpack.packb([b"x", b"y" * 64]),
                                       records.MalformedRecord),
    "not canonically encoded": (non_canonical, records.MalformedRecord),
    "for another user's key": (lambda: presence(ALICE, user="bob", seq=1).wire, records.WrongKey),
    "a name claim by another key": (
        lambda: records.name_claim(MALLORY, "alice", seq=100).wire, records.NameClaimed),
    "a name claim living longer than 32 days": (long_claim, records.LifetimeTooLong),
    "a name claim with an integer time": (int_time_claim, records.MalformedRecord),
    "a presence record living as long as a claim": (long_presence, records.LifetimeTooLong),
}


def snapshot(storage: RecordStorage) -> dict:
    return {k: {s: e.signed.wire for s, e in v.items()} for k, v in storage.data.items()}


def seeded_storage() -> RecordStorage:
    storage = RecordStorage()
    storage.put(records.user_key("alice"), presence(ALICE, seq=5).wire)
    return storage


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_storage_refuses_and_keeps_state(case):
    make, error = BAD_RECORDS[case]
    storage = seeded_storage()
    before = snapshot(storage)
    with pytest.raises(error):
        storage.put(records.user_key("alice"), make())
    assert snapshot(storage) == before
    assert storage.stats.rejected[error.reason] == 1


def test_storage_accepts_newer_sequence_and_keeps_one_value_per_device():
    storage = seeded_storage()
    key = records.user_key("alice")
    storage.put(key, presence(ALICE, seq=6).wire)
    storage.put(key, presence(ALICE, seq=1, device="laptop").wire)
    stored = sorted((s.record.device, s.seq) for s in storage.values(key))
    assert stored == [("laptop", 1), ("phone", 6)]


def test_name_is_free_again_once_the_claim_expired():
    clock = [time.time()]
    storage = RecordStorage(clock=lambda: clock[0])
    key = records.user_key("alice")
    storage.put(key, presence(ALICE, seq=1, lifetime_s=30).wire)
    with pytest.raises(records.NameClaimed):
        storage.put(key, presence(MALLORY, seq=1).wire)
    clock[0] += 31 + records.CLOCK_SKEW_S
    fresh = presence(MALLORY, seq=1, now=clock[0])
    storage.put(key, fresh.wire)
    assert [s.record.user_key for s in storage.values(key)] == [MALLORY.public_key]


def test_storage_bounds_values_per_key():
    from overlay.dht.storage import StorageLimits

    storage = RecordStorage(StorageLimits(max_values_per_key=2))
    key = records.user_key("alice")
    storage.put(key, presence(ALICE, seq=1, device="a").wire)
    storage.put(key, presence(ALICE, seq=1, device="b").wire)
    with pytest.raises(records.StorageFull):
        storage.put(key, presence(ALICE, seq=1, device="c").wire)
    assert len(storage.values(key)) == 2


async def test_network_store_of_bad_records_is_refused_everywhere():
    net = await Network(6).start()
    try:
        key = records.user_key("alice")
        good = presence(ALICE, seq=5)
        await net.nodes[0].put(good)
        holders = [n for n in [net.bootstrap, *net.nodes] if n.storage.values(key)]
        assert holders
        before = {id(n): snapshot(n.storage) for n in [net.bootstrap, *net.nodes]}
        attacker = net.nodes[-1]
        for case, (make, error) in BAD_RECORDS.items():
            for holder in holders:
                if holder is attacker:
                    continue
                reply = await attacker.call(holder.address, "store", key, make(),
                                            node_id=holder.node_id)
                assert reply == {"ok": False, "reason": error.reason}, case
        reply = await attacker.call(holders[0].address, "store", key, 12345)
        assert "error" in reply
        after = {id(n): snapshot(n.storage) for n in [net.bootstrap, *net.nodes]}
        assert after == before
        found = await net.nodes[2].get(key)
        assert [s.wire for s in found] == [good.wire]
    finally:
        net.stop()


async def test_put_of_a_refused_record_raises_with_reasons():
    net = await Network(4).start()
    try:
        await net.nodes[0].put(presence(ALICE, seq=5))
        from overlay.dht import PutFailed

        with pytest.raises(PutFailed, match="stale_sequence"):
            await net.nodes[1].put(presence(ALICE, seq=3))
    finally:
        net.stop()


def test_supernode_record_round_trips_and_verifies():
    signed = records.supernode(SUPERNODE, "198.18.0.10", 4000, seq=3, relay_capacity_bps=2_000_000,
                               relay_spare_bps=1_000_000, load=7, max_clients=100,
                               coords=(1.5, -2.0, 0.01))
    again = records.verify(signed.wire)
    assert again.record == signed.record
    assert again.dht_key == directory_key("198.18.0.10")


def _supernode_body(signed: records.SignedRecord) -> list:
    return msgpack.unpackb(msgpack.unpackb(signed.wire)[0])


def _resign_supernode(body: list) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb([raw, SUPERNODE.sign(records.SIGNING_DOMAIN + raw)], use_bin_type=True)


def test_supernode_record_carries_its_udp_relay_port_and_old_records_stay_valid():
    with_udp = records.supernode(SUPERNODE, "198.18.0.10", 4000, seq=4,
                                 relay_capacity_bps=10**6, relay_spare_bps=10**6,
                                 relay_udp_port=4001)
    assert records.verify(with_udp.wire).record.relay_udp_port == 4001
    assert len(_supernode_body(with_udp)) == 2 + 12
    # a record without a UDP relay is the 11 fields a supernode always signed
    old = records.supernode(SUPERNODE, "198.18.0.10", 4000, seq=5)
    assert len(_supernode_body(old)) == 2 + 11
    assert records.verify(old.wire).record.relay_udp_port == 0


@pytest.mark.parametrize("port, match", [
    (0, "leaves the port out"),        # not canonical: an absent port is left out
    (65536, "out of range"),
    (-1, "out of range"),
    ("4001", "wrong shape"),
    (1.0, "wrong shape"),
])
def test_supernode_record_refuses_a_bad_udp_relay_port(port, match):
    body = _supernode_body(records.supernode(SUPERNODE, "198.18.0.10", 4000, seq=6))
    with pytest.raises(records.MalformedRecord, match=match):
        records.verify(_resign_supernode([*body, port]))


def test_supernode_record_refuses_fields_beyond_the_udp_relay_port():
    body = _supernode_body(records.supernode(SUPERNODE, "198.18.0.10", 4000, seq=7,
                                             relay_udp_port=4001))
    with pytest.raises(records.MalformedRecord, match="wrong shape"):
        records.verify(_resign_supernode([*body, 1]))


def test_record_sizes_fit_a_datagram():
    assert len(presence(ALICE, seq=2**62, capabilities=tuple(f"c{i}" for i in range(16))).wire) \
        <= records.MAX_RECORD_BYTES


def test_name_claim_round_trips_and_outlives_presence():
    signed = records.name_claim(ALICE, "alice", seq=7)
    again = records.verify(signed.wire)
    assert again.record == signed.record and isinstance(again.record, records.NameClaim)
    assert again.dht_key == records.user_key("alice") and again.slot == (ALICE.public_key, "")
    assert signed.expires_at - signed.record.issued_at >= 30 * 86400
    storage = RecordStorage()
    storage.put(again.dht_key, signed.wire)
    storage.put(again.dht_key, presence(ALICE, seq=8).wire)
    assert {s.record.kind for s in storage.values(again.dht_key)} == {
        records.RecordKind.NAME_CLAIM, records.RecordKind.PRESENCE}

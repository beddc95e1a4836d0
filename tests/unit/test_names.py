"""Who owns a name: the majority rule over each holder's answer (dht/names), and
``NAME#KEYPREFIX`` (core/names)."""

from __future__ import annotations

import pytest

from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.user_ref import BadUserRef, UserRef, parse_user_ref
from overlay.dht import DHTNode
from overlay.dht.names import decide, name_owner, owner_from_records
from tests.helpers.netutil import loopback_ips, network_config, node_identity, wait_for
from tests.unit.test_kademlia_regressions import identity_near

ALICE, MALLORY, CAROL = (Identity.generate() for _ in range(3))


def held(*signers: Identity) -> tuple[records.SignedRecord, ...]:
    return tuple(records.name_claim(i, "alice", seq=1) for i in signers)


def holders(*answers: tuple[records.SignedRecord, ...]) -> dict[bytes, tuple]:
    return {bytes([n]) * 20: a for n, a in enumerate(answers)}


def test_the_majority_of_holders_decides():
    owner = decide("alice", holders(held(ALICE), held(ALICE), held(ALICE), held(MALLORY),
                                    held(MALLORY)))
    assert owner.key == ALICE.public_key and owner.keys == (ALICE.public_key,)
    assert not owner.conflict


@pytest.mark.parametrize("answers", [
    (held(ALICE), held(MALLORY)),                                 # a tie
    (held(ALICE), held(ALICE), held(MALLORY), held(MALLORY)),     # a tie
    (held(ALICE), held(MALLORY), held(CAROL)),                    # no majority
    (held(ALICE), held(ALICE, MALLORY), held(MALLORY)),           # a holder with both: no vote
])
def test_no_majority_is_a_conflict_with_every_key(answers):
    owner = decide("alice", holders(*answers))
    assert owner.key is None and owner.conflict
    assert set(owner.keys) == {s.record.signer for a in answers for s in a}


def test_one_key_anywhere_owns_it_and_nothing_is_unknown():
    assert decide("alice", holders(held(ALICE))).key == ALICE.public_key
    unknown = decide("alice", holders())
    assert unknown.key is None and not unknown.conflict and unknown.keys == ()
    # a lone holder answering with two keys: nobody wins
    assert decide("alice", holders(held(ALICE, MALLORY))).conflict


def test_one_merged_answer_with_two_keys_is_a_conflict():
    assert owner_from_records("alice", held(ALICE, MALLORY)).conflict
    assert owner_from_records("alice", held(ALICE)).key == ALICE.public_key


def test_user_refs():
    assert parse_user_ref("alice") == UserRef("alice")
    ref = parse_user_ref("alice#ABCDEF01")
    assert ref == UserRef("alice", "abcdef01") and str(ref) == "alice#abcdef01"
    assert ref.matches(bytes.fromhex("abcdef01" + "00" * 28))
    assert not ref.matches(bytes.fromhex("abcdef02" + "00" * 28))
    for bad in ("alice#abcdef0", "alice#", "alice#xyzxyzxyz", "Alice", "#abcdef01",
                "alice#" + "a" * 65, "alice#abcdef01#00"):
        with pytest.raises(BadUserRef):
            parse_user_ref(bad)


async def test_a_claim_is_handed_over_unchanged_and_then_defends_the_name():
    claim = records.name_claim(ALICE, "alice", seq=1)
    key = claim.dht_key
    ips = loopback_ips(2)
    config = network_config()
    old = DHTNode(node_identity(config), config)
    new = DHTNode(identity_near(key, 10), config)
    await old.start(ips[0], 0)
    await new.start(ips[1], 0)
    try:
        old.store_local(claim.wire, key)
        await new.bootstrap([old.address])
        await wait_for(lambda: [s.wire for s in new.storage.values(key)] == [claim.wire])
        forged = records.presence(MALLORY, "alice", "phone", seq=9, online=False)
        reply = await old.call(new.address, "store", key, forged.wire, node_id=new.node_id)
        assert reply == {"ok": False, "reason": "name_claimed"}
        assert (await name_owner(new, "alice")).key == ALICE.public_key
    finally:
        old.stop()
        new.stop()



def test_the_client_re_signs_its_claim_at_most_daily(tmp_path):
    from overlay.client.options import ClientOptions
    from overlay.client.presence import CLAIM_REFRESH_S, PresenceSigner

    signer = PresenceSigner(ALICE, ClientOptions(user="alice", key_path=tmp_path / "k",
                                                 state_dir=tmp_path))
    first = signer.claim(now=1_800_000_000.0)
    assert signer.claim(now=1_800_000_000.0 + CLAIM_REFRESH_S - 1) is first
    again = signer.claim(now=1_800_000_000.0 + CLAIM_REFRESH_S)
    assert again.seq > first.seq and again.expires_at > first.expires_at
    assert again.expires_at - again.record.issued_at >= 30 * 86400

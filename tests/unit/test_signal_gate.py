"""The sans-IO checks and limits a supernode applies before delivering a signal
(:mod:`overlay.node.signal_gate`, :mod:`overlay.node.signal_limits`): time and lookups are
passed in, so every decision is shown exactly."""

from __future__ import annotations

import msgpack
import pytest

from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.offers import ANSWER_DOMAIN, INVITE_DOMAIN
from overlay.core.rate_limit import KeyedBuckets
from overlay.node.forwarded_signal import ForwardedSignal
from overlay.node.signal_gate import Refusal, SignalGate
from overlay.node.supernode_options import SignalLimits

T0 = 1_000_000.0
ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
SUPERNODE = Identity.from_seed(b"s" * 32)


def offer(signer: Identity, body: bytes = b"invite", domain: bytes = INVITE_DOMAIN) -> bytes:
    wire: bytes = msgpack.packb([body, signer.sign(domain + body)], use_bin_type=True)
    return wire


def signal(key: bytes = ALICE.public_key, payload: bytes | None = None, user: str = "alice",
           to_user: str = "bob") -> ForwardedSignal:
    return ForwardedSignal(user, "laptop", key, to_user, "phone",
                           offer(ALICE) if payload is None else payload)


def directory(*identities: Identity, now: float = T0, lifetime_s: float = 300.0
              ) -> list[records.Record]:
    return [records.supernode(i, "192.0.2.1", 4000, seq=1, now=now,
                              lifetime_s=lifetime_s).record for i in identities]


def ready_gate(limits: SignalLimits | None = None) -> SignalGate:
    """A gate that knows SUPERNODE and that alice owns her name."""
    gate = SignalGate(limits or SignalLimits())
    gate.learn_directory(directory(SUPERNODE), T0)
    gate.learn_owner("alice", ALICE.public_key, T0)
    return gate


# -- the token buckets ------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(rate=2.0, burst=5.0, max_keys=10)
    assert [buckets.allow("a", T0) for _ in range(6)] == [True] * 5 + [False]
    assert buckets.allow("b", T0)  # another key has its own bucket
    assert not buckets.allow("a", T0 + 0.4)  # 0.8 tokens
    assert buckets.allow("a", T0 + 0.5)  # 1.0 token
    assert not buckets.allow("a", T0 + 0.5)
    # refilled to the burst, never beyond
    assert [buckets.allow("a", T0 + 100) for _ in range(6)] == [True] * 5 + [False]


def test_a_clock_that_goes_back_refills_nothing() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(rate=1.0, burst=1.0, max_keys=10)
    assert buckets.allow("a", T0)
    assert not buckets.allow("a", T0 - 50)
    assert not buckets.allow("a", T0 + 0.5)
    assert buckets.allow("a", T0 + 1.0)


def test_buckets_keep_at_most_max_keys_forgetting_the_least_recent() -> None:
    buckets: KeyedBuckets[int] = KeyedBuckets(rate=0.0, burst=1.0, max_keys=3)
    for key in range(3):
        assert buckets.allow(key, T0)
    assert not buckets.allow(0, T0)  # 0 is now the most recent
    assert buckets.allow(3, T0)  # 1 is forgotten
    assert len(buckets) == 3
    assert not buckets.allow(0, T0) and not buckets.allow(2, T0)
    assert buckets.allow(1, T0)  # forgotten: starts full again


@pytest.mark.parametrize("rate,burst,keys", [(-1.0, 5.0, 1), (1.0, 0.5, 1), (1.0, 5.0, 0)])
def test_a_bucket_needs_sane_parameters(rate: float, burst: float, keys: int) -> None:
    with pytest.raises(ValueError):
        KeyedBuckets(rate, burst, keys)


# -- the checks -------------------------------------------------------------------------------


def test_a_genuine_forwarded_signal_passes() -> None:
    gate = ready_gate()
    assert gate.check(signal(), T0, SUPERNODE.public_key) is None
    answer = signal(payload=offer(ALICE, b"answer", ANSWER_DOMAIN))
    assert gate.check(answer, T0, SUPERNODE.public_key) is None
    assert not gate.stats.refused


def test_an_unknown_sender_reads_the_directory_once_then_is_refused() -> None:
    gate = SignalGate(SignalLimits(directory_refresh_min_s=2.0))
    assert gate.check(signal(), T0, MALLORY.public_key) is Refusal.CHECKING
    assert gate.directory_due() and not gate.directory_due()
    # while the read is under way, ask again
    assert gate.check(signal(), T0 + 0.1, MALLORY.public_key) is Refusal.CHECKING
    gate.learn_directory(directory(SUPERNODE), T0 + 0.2)
    # read: not in it, and no new read for directory_refresh_min_s, however many datagrams
    for i in range(100):
        assert gate.check(signal(), T0 + 0.3 + i * 0.01, MALLORY.public_key) \
            is Refusal.NOT_SUPERNODE
    assert not gate.directory_due()
    assert gate.check(signal(), T0 + 2.2, MALLORY.public_key) is Refusal.CHECKING
    assert gate.directory_due()
    assert gate.stats.refused == {"not_supernode": 100}
    assert gate.stats.deferred == 3


def test_a_new_supernode_is_found_on_the_next_read() -> None:
    gate = ready_gate()
    other = Identity.from_seed(b"o" * 32)
    assert gate.check(signal(), T0 + 5, other.public_key) is Refusal.CHECKING
    assert gate.directory_due()
    gate.learn_directory(directory(SUPERNODE, other, now=T0 + 5), T0 + 5)
    assert gate.check(signal(), T0 + 5.1, other.public_key) is None


def test_a_read_covers_the_missing_senders_shards_and_adds_to_what_was_known() -> None:
    """The directory is sharded: the read a miss starts names the sender (its shard is read),
    and what it finds is added to the supernodes known from earlier reads."""
    gate = ready_gate()
    other = Identity.from_seed(b"o" * 32)
    assert gate.check(signal(), T0 + 5, other.public_key) is Refusal.CHECKING
    assert gate.directory_due() and gate.directory_wanted() == [other.public_key]
    gate.learn_directory(directory(other, now=T0 + 5), T0 + 5)  # only the other's shard
    assert gate.directory_wanted() == []
    assert gate.check(signal(), T0 + 5.1, other.public_key) is None
    assert gate.check(signal(), T0 + 5.1, SUPERNODE.public_key) is None  # still known


def test_an_expired_or_foreign_record_is_no_supernode() -> None:
    gate = SignalGate(SignalLimits(directory_refresh_min_s=2.0))
    presence = records.presence(MALLORY, "mallory", "x", seq=1, online=False, now=T0).record
    # the record expires at T0 + 10, a second after this read
    gate.learn_directory([*directory(SUPERNODE, now=T0 - 290, lifetime_s=300), presence],
                         T0 + 9.5)
    assert gate.check(signal(), T0 + 11, SUPERNODE.public_key) is Refusal.NOT_SUPERNODE
    # the read did not look for mallory's shard: one more read, which does
    assert gate.check(signal(), T0 + 11, MALLORY.public_key) is Refusal.CHECKING
    assert gate.directory_due()
    gate.learn_directory([*directory(SUPERNODE, now=T0 - 290, lifetime_s=300), presence],
                         T0 + 11.5)
    assert gate.check(signal(), T0 + 11.6, MALLORY.public_key) is Refusal.NOT_SUPERNODE


def test_a_stale_directory_is_read_again_but_still_trusted_meanwhile() -> None:
    gate = ready_gate(SignalLimits(directory_ttl_s=20.0))
    assert gate.check(signal(), T0 + 10, SUPERNODE.public_key) is None
    assert not gate.directory_due()
    assert gate.check(signal(), T0 + 21, SUPERNODE.public_key) is None
    assert gate.directory_due()


@pytest.mark.parametrize("payload", [
    b'{"text": "hello"}',  # not an offer at all
    offer(MALLORY),  # signed, by someone else
    offer(ALICE, domain=b"overlay/record/v1\x00"),  # alice's signature, another domain
    msgpack.packb([b"invite", b"\x00" * 64], use_bin_type=True),
])
def test_an_invite_not_signed_by_from_key_is_refused(payload: bytes) -> None:
    gate = ready_gate()
    assert gate.check(signal(payload=payload), T0, SUPERNODE.public_key) is Refusal.BAD_INVITE
    assert gate.check(signal(payload=payload), T0, None) is Refusal.BAD_INVITE
    assert not gate.owners_due()  # refused before any lookup


def test_a_key_that_does_not_own_the_name_is_refused_after_one_lookup() -> None:
    gate = ready_gate()
    forged = signal(MALLORY.public_key, offer(MALLORY))
    assert gate.check(forged, T0, SUPERNODE.public_key) is Refusal.NOT_OWNER
    assert not gate.owners_due()  # alice's owner is remembered
    as_carol = signal(MALLORY.public_key, offer(MALLORY), user="carol")
    assert gate.check(as_carol, T0, SUPERNODE.public_key) is Refusal.CHECKING
    assert gate.check(as_carol, T0, SUPERNODE.public_key) is Refusal.CHECKING
    assert gate.owners_due() == ["carol"]  # one lookup, however often asked
    gate.learn_owner("carol", None, T0)  # nobody owns it (or a conflict)
    assert gate.check(as_carol, T0 + 1, SUPERNODE.public_key) is Refusal.NOT_OWNER
    # an unowned name is looked up again sooner than an owned one
    assert gate.check(as_carol, T0 + 6, SUPERNODE.public_key) is Refusal.CHECKING
    assert gate.owners_due() == ["carol"]
    assert gate.check(signal(), T0 + 29, SUPERNODE.public_key) is None
    assert gate.check(signal(), T0 + 31, SUPERNODE.public_key) is Refusal.CHECKING
    assert gate.owners_due() == ["alice"]


def test_owner_lookups_are_capped() -> None:
    gate = ready_gate(SignalLimits(max_owner_lookups=2, per_supernode_burst=1000))
    for i in range(10):
        s = signal(MALLORY.public_key, offer(MALLORY), user=f"user{i}")
        assert gate.check(s, T0, SUPERNODE.public_key) is Refusal.CHECKING
    assert gate.owners_due() == ["user0", "user1"]
    gate.owner_failed("user0")
    s = signal(MALLORY.public_key, offer(MALLORY), user="user5")
    assert gate.check(s, T0, SUPERNODE.public_key) is Refusal.CHECKING
    assert gate.owners_due() == ["user5"]


def test_owners_remembered_are_bounded() -> None:
    gate = SignalGate(SignalLimits(max_owners_cached=2))
    for name in ("a", "b", "c"):
        gate.learn_owner(name, ALICE.public_key, T0)
    assert gate.check(signal(user="a"), T0, None) is Refusal.CHECKING
    assert gate.check(signal(user="c"), T0, None) is None


def test_the_three_rate_limits() -> None:
    limits = SignalLimits(per_caller_burst=3, per_caller_rate=1.0, per_target_burst=5,
                          per_target_rate=1.0, per_supernode_burst=8, per_supernode_rate=1.0)
    gate = ready_gate(limits)
    sn = SUPERNODE.public_key
    results = [gate.check(signal(), T0, sn) for _ in range(4)]
    assert results == [None, None, None, Refusal.RATE_CALLER]
    # another caller to bob: only bob's target bucket is left (5 - 3 = 2)
    carol = Identity.from_seed(b"c" * 32)
    gate.learn_owner("carol", carol.public_key, T0)
    from_carol = signal(carol.public_key, offer(carol), user="carol")
    assert [gate.check(from_carol, T0, sn) for _ in range(3)] == [None, None,
                                                                  Refusal.RATE_TARGET]
    # erin to dave is still fine; then the forwarding supernode's own bucket (8) runs out
    erin = Identity.from_seed(b"e" * 32)
    gate.learn_owner("erin", erin.public_key, T0)
    to_dave = signal(erin.public_key, offer(erin), user="erin", to_user="dave")
    assert gate.check(to_dave, T0, sn) is None
    assert gate.check(to_dave, T0, sn) is Refusal.RATE_FORWARDER
    # one second later each bucket holds one more token
    assert gate.check(signal(), T0 + 1, sn) is None
    assert gate.stats.refused == {"rate_caller": 1, "rate_target": 1, "rate_forwarder": 1}


def test_a_local_signal_skips_the_directory_but_not_the_rest() -> None:
    gate = SignalGate(SignalLimits())  # knows no supernode at all
    assert gate.check(signal(), T0, None) is Refusal.CHECKING
    assert not gate.directory_due() and gate.owners_due() == ["alice"]
    gate.learn_owner("alice", ALICE.public_key, T0)
    assert gate.check(signal(), T0, None) is None
    assert gate.check(signal(MALLORY.public_key, offer(MALLORY)), T0, None) is Refusal.NOT_OWNER


def test_a_sender_missed_by_a_read_that_did_not_look_for_it_waits_for_the_next_one() -> None:
    """A periodic read (or one for other forwarders) just before a new supernode's first
    signal: the signal is not refused for a read that never looked for its sender; it waits
    ("checking") for one read at the end of the window, still one read per window."""
    gate = ready_gate(SignalLimits(directory_refresh_min_s=2.0))  # its read wanted nobody
    other = Identity.from_seed(b"o" * 32)
    assert gate.check(signal(), T0 + 0.5, other.public_key) is Refusal.CHECKING
    assert gate.directory_due() and gate.directory_delay() == pytest.approx(1.5)
    assert gate.directory_wanted() == [other.public_key]
    for i in range(50):  # more misses while it waits: no second read
        assert gate.check(signal(), T0 + 0.6 + i * 0.01, other.public_key) is Refusal.CHECKING
        assert not gate.directory_due()
    gate.learn_directory(directory(SUPERNODE, other, now=T0 + 2), T0 + 2)
    assert gate.check(signal(), T0 + 2.1, other.public_key) is None
    # a read that looked for mallory and did not find her: refused until the window ends
    assert gate.check(signal(), T0 + 4.1, MALLORY.public_key) is Refusal.CHECKING
    assert gate.directory_due() and gate.directory_delay() == 0.0
    gate.learn_directory(directory(SUPERNODE, other, now=T0 + 4.2), T0 + 4.2)
    assert gate.check(signal(), T0 + 4.3, MALLORY.public_key) is Refusal.NOT_SUPERNODE
    assert not gate.directory_due()

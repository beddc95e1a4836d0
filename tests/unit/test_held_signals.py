"""What a receiving supernode remembers of the signals it holds while its gate looks the sender
up (:mod:`overlay.node.held_signals`, sans-IO) and how a signal asked again is recognised
(:meth:`ForwardedSignal.digest`)."""

from __future__ import annotations

import dataclasses

from overlay.node.forwarded_signal import ForwardedSignal
from overlay.node.held_signals import Held, HeldSignals

SN_A, SN_B = b"a" * 32, b"b" * 32
T0 = 1000.0


def signal(payload: bytes = b"invite") -> ForwardedSignal:
    return ForwardedSignal("alice", "laptop", b"k" * 32, "bob", "phone", payload)


def test_the_same_signal_asked_again_has_the_same_digest_and_any_change_another() -> None:
    s = signal()
    assert s.digest() == ForwardedSignal.from_args(s.to_args()).digest()
    for field, value in [("from_user", "alicf"), ("from_device", "laptoq"),
                         ("from_key", b"j" * 32), ("to_user", "boc"), ("to_device", "phonf"),
                         ("payload", b"invitf")]:
        assert dataclasses.replace(s, **{field: value}).digest() != s.digest(), field
    # fields are length-prefixed: moving a byte from one field to the next is another signal
    assert dataclasses.replace(s, from_user="alicel", from_device="aptop").digest() \
        != s.digest()


def test_a_held_signal_is_pending_then_delivered_once_or_forgotten() -> None:
    held = HeldSignals(remember_s=30.0)
    d = signal().digest()
    assert held.state(SN_A, d, T0) is None
    assert held.hold(SN_A, d)
    assert not held.hold(SN_A, d)  # asked again while held: not held twice
    assert held.state(SN_A, d, T0) is Held.PENDING
    # the same signal through another supernode is another forwarding
    assert held.state(SN_B, d, T0) is None
    held.release(SN_A, d, delivered=True, now=T0 + 1)
    assert held.state(SN_A, d, T0 + 2) is Held.DELIVERED  # asked again: "ok", not again
    assert held.state(SN_A, d, T0 + 31.5) is None  # remembered for remember_s only
    refused = signal(b"other").digest()
    assert held.hold(SN_A, refused)
    held.release(SN_A, refused, delivered=False, now=T0)
    assert held.state(SN_A, refused, T0) is None  # checked afresh when asked again
    assert len(held) == 0


def test_holding_is_bounded_in_all_and_per_forwarder() -> None:
    held = HeldSignals(max_held=5, max_per_forwarder=3)
    digests = [signal(b"%d" % i).digest() for i in range(10)]
    assert [held.hold(SN_A, d) for d in digests[:4]] == [True, True, True, False]
    assert [held.hold(SN_B, d) for d in digests[4:8]] == [True, True, False, False]
    assert len(held) == 5
    held.release(SN_A, digests[0], delivered=False, now=T0)
    assert held.hold(SN_B, digests[8])  # room again in all; SN_B had 2 of its 3
    assert not held.hold(SN_A, digests[9])  # the total is full again


def test_delivered_digests_are_bounded() -> None:
    held = HeldSignals(max_remembered=3)
    digests = [signal(b"%d" % i).digest() for i in range(5)]
    for d in digests:
        assert held.hold(SN_A, d)
        held.release(SN_A, d, delivered=True, now=T0)
    assert [held.state(SN_A, d, T0) for d in digests] == [None, None] + [Held.DELIVERED] * 3

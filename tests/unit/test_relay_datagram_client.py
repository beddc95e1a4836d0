"""The client side of the datagram relay (:mod:`overlay.relay.datagram_client`) against the
relay's own sans-IO core: both ends bind, keep the relay's consent with keepalives, and see
refusals and silence as such."""

from __future__ import annotations

import os

from overlay.core.identity import Identity
from overlay.relay.datagram import CONSENT_S, DatagramRelay
from overlay.relay.datagram_client import BOUND, NO_ANSWER, REFUSED, RelayBinding
from tests.adversary.test_relay_datagram_abuse import hello, relay, voucher

RELAY = ("198.18.0.1", 4001)
A, B = ("198.18.1.1", 4000), ("198.18.2.2", 4000)


def exchange(r: DatagramRelay, ends: dict[tuple[str, int], RelayBinding], now: float) -> None:
    """Run the timers of ``ends`` at ``now`` and deliver everything both ways until quiet."""
    queue = [(d, addr) for addr, b in ends.items() for d in b.timer(now)]
    while queue:
        data, src = queue.pop(0)
        for out in r.datagram_received(data, src, now):
            end = ends.get(out.addr)
            if end is not None:
                queue += [(d, out.addr) for d in end.datagram_received(out.data, RELAY, now)]


def test_both_ends_bind_and_keep_consent_with_keepalives() -> None:
    r = relay()
    token = os.urandom(32)
    caller = RelayBinding(RELAY, hello(0, token, voucher(token, Identity.generate(),
                                                        Identity.generate()), 48_000), 0.0)
    callee = RelayBinding(RELAY, hello(1, token, None, 48_000), 0.0)
    exchange(r, {A: caller}, 0.0)  # the caller first: CHALLENGE, then ALLOCATE with the cookie
    assert caller.state == "binding" and token in r.sessions
    exchange(r, {A: caller, B: callee}, 0.1)
    assert caller.state == callee.state == BOUND
    assert caller.limits is not None and caller.limits.rate_bps == 48_000
    # only B sends data; A stays silent but keeps the relay's consent with its keepalives
    now = 0.1
    while now < 3 * CONSENT_S:
        now += 0.5
        exchange(r, {A: caller, B: callee}, now)
        assert [s.addr for s in r.datagram_received(b"media", B, now)] == [A], now
    assert caller.next_timer() - now <= CONSENT_S


def test_a_callee_that_comes_first_keeps_asking_until_its_caller_is_there() -> None:
    r = relay()
    token = os.urandom(32)
    callee = RelayBinding(RELAY, hello(1, token), 0.0)
    exchange(r, {B: callee}, 0.0)
    exchange(r, {B: callee}, 0.3)
    assert callee.state == "binding" and r.stats.refused["unknown token"] >= 1
    caller = RelayBinding(RELAY, hello(0, token, voucher(token, Identity.generate(),
                                                        Identity.generate())), 0.5)
    exchange(r, {A: caller}, 0.5)
    exchange(r, {A: caller, B: callee}, 0.6)
    assert caller.state == callee.state == BOUND


def test_a_refusal_and_silence_end_the_binding() -> None:
    r = relay()
    refused = RelayBinding(RELAY, hello(0, os.urandom(32)), 0.0)  # no credential
    exchange(r, {A: refused}, 0.0)
    assert refused.state == REFUSED and refused.reason == "unreserved"
    assert refused.timer(1.0) == [] and refused.next_timer() == float("inf")

    silent = RelayBinding(RELAY, hello(0, os.urandom(32)), 0.0, timeout_s=2.0)
    sent, now = 0, 0.0
    while silent.state != REFUSED:
        now = silent.next_timer()
        sent += len(silent.timer(now))
    assert silent.reason == NO_ANSWER and now == 2.0
    assert sent == 8  # every 0.25 s until the deadline


def test_only_the_relays_own_control_answers_are_taken() -> None:
    binding = RelayBinding(RELAY, hello(1, os.urandom(32)), 0.0)
    assert len(binding.timer(0.0)) == 1
    ok = b"OVRD\x01\x02\x00\x00"
    assert binding.datagram_received(ok, ("198.18.9.9", 4001), 0.1) == []  # not the relay
    assert binding.datagram_received(b"OVRD\x01\x07" + ok, RELAY, 0.1) == []  # unknown type
    assert binding.datagram_received(b"OVRD\x01\x01short", RELAY, 0.1) == []  # bad cookie
    assert binding.datagram_received(b"OVRD\x01\x02\x07\x00", RELAY, 0.1) == []  # bad status
    assert binding.state == "binding"
    assert binding.datagram_received(ok, RELAY, 0.1) == [] and binding.state == BOUND


def test_release_ends_the_session_and_gives_the_budget_back_at_once() -> None:
    r = relay()
    changes: list[int] = []
    r.on_change = lambda: changes.append(len(r.sessions))
    token = os.urandom(32)
    caller = RelayBinding(RELAY, hello(0, token, voucher(token, Identity.generate(),
                                                        Identity.generate()), 48_000), 0.0)
    callee = RelayBinding(RELAY, hello(1, token, None, 48_000), 0.0)
    exchange(r, {A: caller, B: callee}, 0.0)
    exchange(r, {A: caller, B: callee}, 0.3)
    assert caller.state == callee.state == BOUND and r.budget.reserved_bps == 48_000
    for datagram in callee.release():
        r.datagram_received(datagram, B, 1.0)
    assert not r.sessions and r.budget.reserved_bps == 0
    assert r.stats.ended["released"] == 1 and changes == [1, 0]
    assert callee.timer(100.0) == [] and callee.release() == []
    # the caller's own RELEASE comes after: nothing left to end
    for datagram in caller.release():
        assert r.datagram_received(datagram, A, 1.1) == []
    assert r.stats.ended["released"] == 1


def test_a_caller_abandoning_its_wait_releases_the_reservation() -> None:
    r = relay()
    token = os.urandom(32)
    caller = RelayBinding(RELAY, hello(0, token, voucher(token, Identity.generate(),
                                                        Identity.generate()), 48_000), 0.0)
    exchange(r, {A: caller}, 0.0)
    assert r.budget.reserved_bps == 48_000
    for datagram in caller.release():
        r.datagram_received(datagram, A, 0.5)
    assert r.budget.reserved_bps == 0 and not r.admission.per_ip

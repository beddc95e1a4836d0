"""The datagram relay's honest flows (attacks: tests/adversary/test_relay_datagram_abuse.py)."""

from __future__ import annotations

import os

from overlay.core.identity import Identity
from overlay.relay.datagram import DatagramRelay
from overlay.relay.protocol import decode_limits
from tests.adversary.test_relay_datagram_abuse import (
    bind,
    hello,
    relay,
    status_of,
    voucher,
)

A, B = ("198.18.1.1", 4000), ("198.18.2.2", 4000)


def _pair(r: DatagramRelay, token: bytes) -> None:
    assert bind(r, A, hello(0, token, voucher(token, Identity.generate(),
                                              Identity.generate()), 48_000)) == []
    out = bind(r, B, hello(1, token))
    assert sorted(s.addr for s in out) == [A, B]
    for ok in status_of(out):
        limits = decode_limits(ok)
        assert limits is not None and limits.rate_bps == 48_000


def test_pair_forward_both_ways_and_count() -> None:
    r = relay()
    _pair(r, os.urandom(32))
    for i in range(50):
        assert [s.addr for s in r.datagram_received(b"a%d" % i, A, 2.0 + i / 50)] == [B]
        assert [s.data for s in r.datagram_received(b"b%d" % i, B, 2.0 + i / 50)] == [b"b%d" % i]
    assert r.stats.calls == 1 and r.stats.datagrams == 100
    assert r.stats.bytes == sum(len(b"a%d" % i) * 2 for i in range(50))
    assert r.budget.forwarded_bytes == r.stats.bytes


def test_retransmitted_allocate_is_answered_again_and_rebinding_moves_a_role() -> None:
    r = relay()
    token = os.urandom(32)
    _pair(r, token)
    assert len(status_of(bind(r, B, hello(1, token)))) == 1  # B lost its OK: asks again
    moved = ("198.18.2.2", 4999)  # B's NAT rebinds
    assert status_of(bind(r, moved, hello(1, token)))
    assert [s.addr for s in r.datagram_received(b"x", A, 3.0)] == [moved]
    assert r.datagram_received(b"x", B, 3.0) == []  # the old address is unbound


def test_pair_timeout_idle_and_token_reuse() -> None:
    r = relay()
    token = os.urandom(32)
    bind(r, A, hello(0, token, voucher(token, Identity.generate(), Identity.generate())))
    out = r.tick(20.0)
    assert [s.addr for s in out] == [A] and status_of(out)[0][2:] == b"timeout"
    assert not r.sessions and r.budget.reserved_bps == 0 and not r.admission.per_ip
    assert status_of(bind(r, B, hello(1, token), 21.0))[0][2:] == b"token used"
    token2 = os.urandom(32)
    _pair(r, token2)
    r.tick(30.0)
    assert token2 in r.sessions
    r.tick(1.0 + 61.0)
    assert not r.sessions and r.stats.ended["idle"] == 1


def test_callee_before_caller_and_an_address_in_two_sessions() -> None:
    r = relay()
    assert status_of(bind(r, B, hello(1, os.urandom(32))))[0][2:] == b"unknown token"
    _pair(r, os.urandom(32))
    token = os.urandom(32)
    out = bind(r, A, hello(0, token, voucher(token, Identity.generate(), Identity.generate())))
    assert status_of(out)[0][2:] == b"address in use"

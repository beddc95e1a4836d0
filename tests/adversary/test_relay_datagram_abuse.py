"""The datagram relay (issue 15) against someone who wants it for free, or as a cannon.

The attacker has raw UDP datagrams with any source address it likes (it can spoof, but it
receives only at addresses it holds), throwaway ed25519 keys, and the wire format of
docs/ARCHITECTURE.md ("Calls"). The relay is the sans-IO :class:`DatagramRelay` with a
budget like `overlay supernode`'s default; every datagram is built from bytes.

1. A spoofed ALLOCATE (the victim's source address) gets only a CHALLENGE, no longer than the
   request, and allocates nothing; a cookie obtained at the attacker's own address does not
   bind the victim's.
2. No credential, a forged voucher: refused (``unreserved``, ``bad voucher``), nothing held.
3. Datagrams from any address but the two bound ones are never forwarded.
4. Once the receiving end is silent (no consent) or has sent far less than it got, the relay
   stops sending to it.
5. The TCP relay's limits hold across both relays: one /24 and one key pair stop at their
   limits; a relay with budget B admits only as many calls as fit.
6. A session flooding beyond its rate is cut to its rate (datagrams dropped, not queued).
7. A RELEASE (hang-up) ends a session only with the session's token, sent from one of its
   bound addresses: spoofing an end's address without the token, or the token from
   elsewhere, ends nothing.
"""

from __future__ import annotations

import hashlib
import os
import struct

from overlay.core.identity import Identity
from overlay.relay.admission import RelayAdmission
from overlay.relay.budget import Budget, BudgetConfig
from overlay.relay.datagram import (
    AMPLIFICATION_ALLOWANCE,
    CONSENT_S,
    START_CREDIT_BYTES,
    DatagramRelay,
    Send,
)

RELAY_KEY = Identity.from_seed(b"\x42" * 32).public_key
WALL = 1_800_000_000.0
VOUCHER_DOMAIN = b"overlay/relay-voucher/v1\x00"
MBIT = 1_000_000


def relay(total_bps: int = 2 * MBIT, **cfg: int) -> DatagramRelay:
    config = BudgetConfig(total_bps=total_bps, **cfg)  # type: ignore[arg-type]
    return DatagramRelay(config, Budget(config, 0.0), RelayAdmission(config),
                         node_key=RELAY_KEY, wall_offset=WALL)


def hello(role: int, token: bytes, voucher: bytes | None = None, rate: int = 0) -> bytes:
    head = b"OVRL" + struct.pack(">BB32sQ", 2, role, token, rate)
    return head + (b"\x01" + voucher if voucher else b"\x00")


def allocate(cookie: bytes, body: bytes) -> bytes:
    return b"OVRD\x01\x00" + cookie + body


def voucher(token: bytes, caller: Identity, callee: Identity, expires: int | None = None
            ) -> bytes:
    th = hashlib.blake2b(token, digest_size=32, person=b"ovl-relay-token").digest()
    statement = RELAY_KEY + th + struct.pack(">Q", expires or int(WALL) + 300) \
        + caller.public_key + callee.public_key
    return statement + caller.sign(VOUCHER_DOMAIN + statement) \
        + callee.sign(VOUCHER_DOMAIN + statement)


def status_of(out: list[Send]) -> list[bytes]:
    return [s.data[6:] for s in out if s.data[:6] == b"OVRD\x01\x02"]


def bind(r: DatagramRelay, addr: tuple[str, int], body: bytes, now: float = 1.0
         ) -> list[Send]:
    """What an honest client does: ALLOCATE, take the CHALLENGE, ALLOCATE again."""
    (challenge,) = r.datagram_received(allocate(bytes(16), body), addr, now)
    assert challenge.data[:6] == b"OVRD\x01\x01" and challenge.addr == addr
    return r.datagram_received(allocate(challenge.data[6:], body), addr, now)


def call(r: DatagramRelay, caller: tuple[str, int], callee: tuple[str, int],
         token: bytes | None = None, now: float = 1.0) -> list[bytes]:
    token = token or os.urandom(32)
    a, b = Identity.generate(), Identity.generate()
    first = bind(r, caller, hello(0, token, voucher(token, a, b), 48_000), now)
    if first:
        return status_of(first)
    return status_of(bind(r, callee, hello(1, token), now))


def test_spoofed_allocate_only_gets_a_small_challenge_and_binds_nothing() -> None:
    r = relay()
    victim, attacker = ("198.18.9.9", 5000), ("198.18.7.7", 6000)
    token = os.urandom(32)
    request = allocate(bytes(16), hello(0, token, voucher(token, Identity.generate(),
                                                         Identity.generate())))
    out = r.datagram_received(request, victim, 1.0)
    assert len(out) == 1 and len(out[0].data) <= len(request) and not r.sessions
    # the cookie the attacker gets at its own address does not bind the victim's
    (own,) = r.datagram_received(request, attacker, 1.0)
    again = r.datagram_received(allocate(own.data[6:], request[22:]), victim, 1.0)
    assert again[0].data[:6] == b"OVRD\x01\x01" and not r.sessions and not r.by_addr
    # small requests: every answer is at most as long as what caused it
    for size in (6, 22, 40, 68):
        for sent in r.datagram_received(allocate(bytes(16), bytes(64))[:size], victim, 1.0):
            assert len(sent.data) <= size


def test_no_credential_and_forged_vouchers_are_refused_and_hold_nothing() -> None:
    r = relay()
    token = os.urandom(32)
    addr = ("198.18.1.1", 4000)
    assert status_of(bind(r, addr, hello(0, token))) == [b"\x01\x0aunreserved"]
    a, b = Identity.generate(), Identity.generate()
    forged = bytearray(voucher(token, a, b))
    forged[-1] ^= 1
    assert status_of(bind(r, addr, hello(0, token, bytes(forged))))[0][2:] == b"bad voucher"
    other = voucher(os.urandom(32), a, b)
    assert status_of(bind(r, addr, hello(0, token, other)))[0][2:] == b"bad voucher"
    assert not r.sessions and r.budget.reserved_bps == 0 and not r.admission.per_ip


def test_datagrams_from_third_addresses_are_never_forwarded() -> None:
    r = relay()
    a, b, evil = ("198.18.1.1", 4000), ("198.18.2.2", 4000), ("198.18.3.3", 4000)
    assert call(r, a, b)[0][0] == 0
    assert [s.addr for s in r.datagram_received(b"media", a, 2.0)] == [b]
    for src in (evil, ("198.18.1.1", 4001), ("198.18.2.2", 4001)):
        assert r.datagram_received(b"inject", src, 2.0) == []
    assert r.stats.datagrams == 1


def test_relay_stops_sending_to_a_silent_or_non_consenting_end() -> None:
    r = relay()
    a, b = ("198.18.1.1", 4000), ("198.18.2.2", 4000)
    call(r, a, b)
    assert r.datagram_received(b"x" * 100, a, 2.0)
    # b sends nothing for longer than CONSENT_S: a's datagrams no longer go out
    assert r.datagram_received(b"x" * 100, a, 2.0 + CONSENT_S + 0.5) == []
    # b comes back: forwarding resumes, but only up to AMPLIFICATION x what b sent
    r.datagram_received(b"OVRD\x01\x03", b, 13.0)
    sent = 0
    for _ in range(2000):
        out = r.datagram_received(b"y" * 1000, a, 13.0 + _ * 0.01)
        sent += sum(len(s.data) for s in out)
    assert sent <= 3 * (6 + 200) + AMPLIFICATION_ALLOWANCE + 1000
    assert r.stats.dropped["amplification"] > 0


def test_per_subnet_and_per_key_limits_hold() -> None:
    r = relay(total_bps=100 * MBIT, max_sessions=100)
    answers = [call(r, (f"198.18.5.{i}", 4000), (f"198.19.{i}.1", 4000))[0]
               for i in range(1, 7)]
    assert [x[0] for x in answers[:4]] == [0] * 4
    assert answers[4][2:] == b"subnet limit"
    assert call(r, ("198.18.6.1", 4000), ("198.19.99.1", 4000))[0][0] == 0
    # one key pair, many /24s
    a, b = Identity.generate(), Identity.generate()
    results = []
    for i in range(1, 7):
        token = os.urandom(32)
        out = bind(r, (f"198.18.{20 + i}.1", 4000),
                   hello(0, token, voucher(token, a, b), 48_000))
        results.append(status_of(out)[0][2:] if out else b"waiting")
    assert results[:4] == [b"waiting"] * 4 and results[4] == b"key limit"


def test_budget_admits_only_the_calls_that_fit() -> None:
    # B = 200 kbit/s, calls ask 48 kbit/s (24 each way): four fit, the fifth is refused
    r = relay(total_bps=200_000, max_sessions=100, max_sessions_per_subnet=100,
              max_sessions_per_ip=100, subnet_share=1)
    got = []
    for i in range(5):
        token = os.urandom(32)
        a, b = Identity.generate(), Identity.generate()
        out = bind(r, (f"198.18.{i}.1", 4000), hello(0, token, voucher(token, a, b), 48_000))
        got.append(status_of(out)[0][2:] if out else b"waiting")
    assert got == [b"waiting"] * 4 + [b"budget"]


def test_flood_is_cut_to_the_session_rate() -> None:
    r = relay(total_bps=10 * MBIT)
    a, b = ("198.18.1.1", 4000), ("198.18.2.2", 4000)
    token = os.urandom(32)
    bind(r, a, hello(0, token, voucher(token, Identity.generate(), Identity.generate()),
                     64_000))
    bind(r, b, hello(1, token))
    forwarded = 0
    for i in range(10_000):  # 1,000 datagrams/s of 1,000 bytes for 10 s: 8 Mbit/s
        now = 2.0 + i * 0.001
        r.datagram_received(b"OVRD\x01\x03", b, now)
        forwarded += sum(len(s.data) for s in r.datagram_received(b"z" * 1000, a, now))
    # the rate, the bucket's depth and the one-time start credit, no more
    assert forwarded <= 64_000 / 8 * 10 + 4096 + START_CREDIT_BYTES + 1000
    assert r.stats.dropped["budget"] > 9000


def test_a_release_without_the_token_or_from_elsewhere_ends_nothing() -> None:
    r = relay()
    a, b, evil = ("198.18.1.1", 4000), ("198.18.2.2", 4000), ("198.18.3.3", 4000)
    token = os.urandom(32)
    assert call(r, a, b, token)[0][0] == 0
    release = b"OVRD\x01\x04"
    for body, src in ((os.urandom(32), a), (b"", b), (token[:16], a), (token + b"x", b),
                      (token, evil), (token, ("198.18.1.1", 4001))):
        assert r.datagram_received(release + body, src, 2.0) == []
    assert token in r.sessions and r.budget.reserved_bps == 48_000
    assert [s.addr for s in r.datagram_received(b"media", a, 2.0)] == [b]
    # the end itself, with the token: the session ends, its reservation is free again
    assert r.datagram_received(release + token, b, 2.5) == []
    assert not r.sessions and r.budget.reserved_bps == 0
    assert r.datagram_received(b"media", a, 2.6) == []

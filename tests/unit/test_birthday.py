"""The sans-IO birthday puncher (overlay.media.birthday): roles, target choice, pacing, caps,
and success between a fake random-port NAT and a fake endpoint-independent one (in-process
fakes with virtual time; the real routers are in tests/lab/test_birthday_lab.py)."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from overlay.core.addresses import Address
from overlay.media.birthday import (
    BIRTHDAY_TIMEOUT_S,
    EASY_PROBES,
    FIRST_PORT,
    HARD_SOCKETS,
    OPEN_BATCH,
    SPRAY_BATCH,
    SPRAY_INTERVAL_S,
    BirthdayPuncher,
    birthday_role,
    success_probability,
)
from overlay.media.punch import PROBE, decode_probe, encode_probe

KEY = bytes(range(32))
SID = bytes(16)
HARD_IP, EASY_IP = "198.18.0.10", "198.18.0.20"
HARD_HOST, EASY_HOST = ("10.0.0.2", 5000), ("10.1.0.2", 7000)
EASY_PUBLIC = (EASY_IP, 7000)


def easy(now: float = 0.0, seed: int = 1, **kw: object) -> BirthdayPuncher:
    return BirthdayPuncher(SID, KEY, [EASY_HOST, EASY_PUBLIC], [HARD_HOST, (HARD_IP, 40000)],
                           initiator=True, now=now, role="easy", rng=random.Random(seed),
                           **kw)  # type: ignore[arg-type]


def hard(now: float = 0.0, **kw: object) -> BirthdayPuncher:
    return BirthdayPuncher(SID, KEY, [HARD_HOST, (HARD_IP, 40000)], [EASY_HOST, EASY_PUBLIC],
                           initiator=False, now=now, role="hard", **kw)  # type: ignore[arg-type]


def test_roles_follow_the_nat_types() -> None:
    assert birthday_role("symmetric", "cone") == "hard"
    assert birthday_role("symmetric", "public") == "hard"
    assert birthday_role("cone", "symmetric") == "easy"
    assert birthday_role("public", "symmetric") == "easy"
    for pair in [("symmetric", "symmetric"), ("cone", "cone"), ("cone", "public"),
                 ("symmetric", "unknown"), ("unknown", "symmetric"), ("no-udp", "symmetric"),
                 ("symmetric", "no-udp")]:
        assert birthday_role(*pair) is None, pair


def test_the_chosen_numbers_give_98_percent() -> None:
    assert success_probability(HARD_SOCKETS, EASY_PROBES) == pytest.approx(0.983, abs=0.001)
    assert success_probability(0, EASY_PROBES) == 0.0
    assert success_probability(HARD_SOCKETS, 0) == 0.0


def test_the_spray_aims_at_distinct_ports_of_the_peers_public_address_only() -> None:
    p = easy()
    assert len(p.spray) == EASY_PROBES
    assert {h for h, _ in p.spray} == {HARD_IP}  # never the peer's host candidate
    ports = [port for _, port in p.spray]
    assert len(set(ports)) == len(ports)
    assert all(FIRST_PORT <= port <= 65535 for port in ports)
    assert 40000 not in ports  # the announced port is probed the simple way already
    assert easy(seed=1).spray == p.spray  # the rng decides (seeded in tests)
    assert easy(seed=2).spray != p.spray


def test_the_caps_hold_whatever_is_asked() -> None:
    assert len(easy(probes=10**6).spray) == EASY_PROBES
    assert hard(sockets=10**6).sockets == HARD_SOCKETS
    assert hard().spray == [] and easy().sockets == 0


def run_alone(p: BirthdayPuncher) -> list[tuple[float, Address]]:
    """Drive a puncher nobody answers at its timers; (time, address) of every probe sent."""
    sent: list[tuple[float, Address]] = []
    now = 0.0
    while p.state == "punching":
        p.handle_timer(now)
        sent += [(now, addr) for _, addr in p.datagrams_to_send(now)]
        sent += [(now, addr) for _, _, addr in p.extra_datagrams_to_send(now)]
        timer = p.get_timer()
        if timer is None:
            break
        now = max(now, timer)
    return sent


def test_the_spray_is_paced_and_ends_by_the_deadline() -> None:
    p = easy()
    spray = [(t, a) for t, a in run_alone(p) if a[1] != 40000 and a[0] == HARD_IP]
    assert len(spray) == EASY_PROBES == p.spray_sent
    per_slot = Counter(round(t / SPRAY_INTERVAL_S) for t, _ in spray)
    assert max(per_slot.values()) <= SPRAY_BATCH
    assert spray[-1][0] == pytest.approx((EASY_PROBES / SPRAY_BATCH - 1) * SPRAY_INTERVAL_S,
                                         abs=0.01)  # ~4.1 s
    assert spray[-1][0] < BIRTHDAY_TIMEOUT_S
    assert p.state == "failed"


def test_the_hard_side_probes_once_from_each_extra_socket_in_batches() -> None:
    p = hard()
    sent: list[tuple[float, int, Address]] = []
    now = 0.0
    while now < 0.2:
        sent += [(now, i, a) for i, _, a in p.extra_datagrams_to_send(now)]
        now += 0.005
    assert sorted(i for _, i, _ in sent) == list(range(1, HARD_SOCKETS + 1))
    assert {a for _, _, a in sent} == {EASY_PUBLIC}  # the reflexive candidate only
    assert max(Counter(t for t, _, _ in sent).values()) == OPEN_BATCH
    assert p.probes_sent == HARD_SOCKETS


def test_a_probe_on_an_extra_socket_wins_and_is_answered_from_that_socket() -> None:
    p = hard()
    p.extra_datagrams_to_send(0.0)
    probe = encode_probe(KEY, PROBE, 0, SID, os.urandom(8))
    p.receive_on(7, probe, EASY_PUBLIC, 0.5)
    assert p.state == "succeeded" and p.winner == 7 and p.selected == EASY_PUBLIC
    out = p.extra_datagrams_to_send(0.5)
    kinds = sorted(decode_probe(KEY, d).kind for _, d, _ in out)  # type: ignore[union-attr]
    assert {(i, a) for i, _, a in out} == {(7, EASY_PUBLIC)} and kinds == [1, 2]  # probe, ack
    assert p.datagrams_to_send(0.5) == []  # nothing for the media socket
    with pytest.raises(ValueError):
        p.receive_on(HARD_SOCKETS + 1, probe, EASY_PUBLIC, 0.5)


def test_a_forged_probe_on_an_extra_socket_does_not_win() -> None:
    p = hard()
    forged = encode_probe(b"k" * 32, PROBE, 0, SID, os.urandom(8))
    p.receive_on(3, forged, ("198.18.9.9", 1), 0.1)
    assert p.state == "punching" and p.winner is None and p.rejected["bad_tag"] == 1
    assert p.extra_datagrams_to_send(0.1)[0][1] != forged  # only its own first probes


# -- the fake network ------------------------------------------------------------------------


class FakeRandomPortNat:
    """A fake symmetric NAT: a new random external port (1024-65535) per (internal address,
    destination); an inbound packet passes only as the reply of such a mapping."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.out: dict[tuple[Address, Address], int] = {}
        self.back: dict[tuple[int, Address], Address] = {}

    def outbound(self, internal: Address, dst: Address) -> Address:
        port = self.out.get((internal, dst))
        if port is None:
            port = self.rng.randrange(FIRST_PORT, 65536)
            while (port, dst) in self.back:
                port = self.rng.randrange(FIRST_PORT, 65536)
            self.out[(internal, dst)] = port
            self.back[(port, dst)] = internal
        return (HARD_IP, port)

    def inbound(self, port: int, src: Address) -> Address | None:
        return self.back.get((port, src))


class FakeConeNat:
    """A fake endpoint-independent (port-restricted cone) NAT: the source port is kept; an
    inbound packet passes only from an address the internal host sent to."""

    def __init__(self) -> None:
        self.sent: set[tuple[int, Address]] = set()

    def outbound(self, internal: Address, dst: Address) -> Address:
        self.sent.add((internal[1], dst))
        return (EASY_IP, internal[1])

    def inbound(self, port: int, src: Address) -> Address | None:
        return (EASY_HOST[0], port) if (port, src) in self.sent else None


def simulate(seed: int, sockets: int = HARD_SOCKETS) -> tuple[BirthdayPuncher, BirthdayPuncher]:
    """One session between a hard side behind FakeRandomPortNat and an easy side behind
    FakeConeNat (no delay, no loss), in virtual time."""
    rng = random.Random(seed)
    hnat, enat = FakeRandomPortNat(rng), FakeConeNat()
    mapped = hnat.outbound(HARD_HOST, ("198.18.0.1", 3478))  # what a supernode saw
    h = BirthdayPuncher(SID, KEY, [HARD_HOST, mapped], [EASY_HOST, EASY_PUBLIC],
                        initiator=False, now=0.0, role="hard", sockets=sockets)
    e = BirthdayPuncher(SID, KEY, [EASY_HOST, EASY_PUBLIC], [HARD_HOST, mapped],
                        initiator=True, now=0.0, role="easy", rng=rng)

    def from_hard(internal: Address, data: bytes, dst: Address, now: float) -> None:
        src = hnat.outbound(internal, dst)
        if dst[0] == EASY_IP and enat.inbound(dst[1], src) is not None:
            e.receive_datagram(data, src, now)

    def from_easy(data: bytes, dst: Address, now: float) -> None:
        src = enat.outbound(EASY_HOST, dst)
        to = hnat.inbound(dst[1], src) if dst[0] == HARD_IP else None
        if to == HARD_HOST:
            h.receive_datagram(data, src, now)
        elif to is not None:
            h.receive_on(to[1] - 6000, data, src, now)

    now = 0.0
    while now < BIRTHDAY_TIMEOUT_S + 1:
        for p in (h, e):
            p.handle_timer(now)
        busy = True
        while busy:  # deliver until nothing more is due at this instant
            busy = False
            for data, dst in h.datagrams_to_send(now):
                busy = True
                from_hard(HARD_HOST, data, dst, now)
            for index, data, dst in h.extra_datagrams_to_send(now):
                busy = True
                from_hard(("10.0.0.2", 6000 + index), data, dst, now)
            for data, dst in e.datagrams_to_send(now):
                busy = True
                from_easy(data, dst, now)
        timers = [t for t in (h.get_timer(), e.get_timer()) if t is not None]
        if not timers:
            break
        now = max(now + 1e-6, min(timers))
    return h, e


def test_birthday_punching_gets_through_a_random_port_nat_to_a_cone() -> None:
    wins = 0
    for seed in range(60):
        h, e = simulate(seed)
        if h.state == "succeeded":
            wins += 1
            assert e.state == "succeeded"
            assert h.winner is not None and h.winner >= 1
            assert h.selected == EASY_PUBLIC and e.selected is not None
            assert e.selected[0] == HARD_IP
            assert e.spray_sent <= EASY_PROBES
    assert wins >= 55  # 98.3 % expected: 60 * 0.983 = 59


def test_without_the_extra_sockets_the_same_pair_never_gets_through() -> None:
    """The control: simple punching (plus the spray) against the fake random-port NAT."""
    for seed in range(5):
        h, e = simulate(seed, sockets=0)
        assert h.state == e.state == "failed"

"""Which relays a call tries and in what order (:mod:`overlay.media.call_relays`), and the
invite's relay UDP ports on the wire (:mod:`overlay.media.signalling`)."""

from __future__ import annotations

import os
import time

import msgpack
import pytest

from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.offers import INVITE_DOMAIN
from overlay.media import call_relays
from overlay.media.connect import RELAY_STAGGER_S, stagger_for
from overlay.media.relay_vouchers import callee_signatures, caller_signatures
from overlay.media.signalling import (
    Candidates,
    MediaKeys,
    Offer,
    SignallingError,
    new_session_id,
    open_offer,
    sign_offer,
)

ALICE, BOB = Identity.generate(), Identity.generate()
NODES = [Identity.generate() for _ in range(3)]
RELAYS = tuple((f"198.18.0.{i + 1}", 4000, n.public_key) for i, n in enumerate(NODES))


def directory() -> list[records.SignedRecord]:
    """Relays 0 and 2 run a datagram relay, relay 1 does not."""
    return [records.supernode(n, f"198.18.0.{i + 1}", 4000, seq=1, relay_capacity_bps=10**6,
                              relay_spare_bps=10**6, relay_udp_port=4001 if i != 1 else 0)
            for i, n in enumerate(NODES)]


def invite_and_answer(ports: tuple[int, ...], nat: str = "cone", peer_nat: str = "cone",
                      sign: bool = True) -> tuple[Offer, Offer]:
    secret, expires = os.urandom(32), int(time.time()) + 600
    sigs = caller_signatures(ALICE, RELAYS, secret, BOB.public_key, expires) if sign else ()
    invite = open_offer(sign_offer(Offer(
        "invite", new_session_id(), "alice", "phone", ALICE.public_key, "bob",
        MediaKeys().public, Candidates(nat=nat), time.time(), purpose="call", relays=RELAYS,
        relay_secret=secret, relay_expires=expires if sigs else 0, relay_sigs=sigs,
        relay_udp_ports=ports), ALICE).wire)
    counter = callee_signatures(BOB, invite, time.time())
    answer = open_offer(sign_offer(Offer(
        "answer", invite.session_id, "bob", "laptop", BOB.public_key, "alice",
        MediaKeys().public, Candidates(nat=peer_nat), time.time(),
        relay_expires=invite.relay_expires if counter else 0, relay_sigs=counter), BOB).wire)
    return invite, answer


def test_the_invite_names_the_udp_port_each_relay_advertises() -> None:
    ports = call_relays.udp_ports(directory(), RELAYS)
    assert ports == (4001, 0, 4001)
    assert call_relays.udp_ports(directory()[1:2], RELAYS) == ()
    assert call_relays.udp_ports(None, RELAYS) == ()
    invite, _ = invite_and_answer(ports)
    assert invite.relay_udp_ports == (4001, 0, 4001) and invite.relays == RELAYS
    # on the wire: a 4th element only where there is a port; an invite without any is as
    # it always was
    wire_relays = msgpack.unpackb(msgpack.unpackb(invite.wire)[0])[12]
    assert [len(r) for r in wire_relays] == [4, 3, 4]
    plain, _ = invite_and_answer(())
    assert plain.relay_udp_ports == ()
    assert all(len(r) == 3 for r in msgpack.unpackb(msgpack.unpackb(plain.wire)[0])[12])


@pytest.mark.parametrize("port", [0, 65536, -1, "4001"])
def test_an_invite_with_a_bad_relay_udp_port_is_refused(port: object) -> None:
    invite, _ = invite_and_answer((4001, 0, 4001))
    body = invite.fields()
    body[12][0][3] = port
    raw = msgpack.packb(body, use_bin_type=True)
    wire = msgpack.packb([raw, ALICE.sign(INVITE_DOMAIN + raw)], use_bin_type=True)
    with pytest.raises(SignallingError, match="relays are up to"):
        open_offer(wire)


def test_both_ends_try_the_datagram_relays_only_when_both_send_udp_and_signed() -> None:
    ports = (4001, 0, 4001)
    invite, answer = invite_and_answer(ports)
    for initiator in (True, False):
        attempts = call_relays.udp_relay_attempts(invite, answer, initiator, 160_000,
                                                  dialable={0, 1, 2})
        assert sorted(attempts) == ["relay-udp-0", "relay-udp-2"]
    # a relay the candidate policy does not let us dial is not tried over UDP either
    assert sorted(call_relays.udp_relay_attempts(invite, answer, True, 0, {2})) == \
        ["relay-udp-2"]
    for nat, peer_nat in (("no-udp", "cone"), ("cone", "no-udp")):
        i, a = invite_and_answer(ports, nat, peer_nat)
        assert call_relays.udp_relay_attempts(i, a, True, 0, {0, 1, 2}) == {}
    unsigned, answer = invite_and_answer(ports, sign=False)
    assert call_relays.udp_relay_attempts(unsigned, answer, True, 0, {0, 1, 2}) == {}


def test_the_tcp_relay_starts_after_the_datagram_relay() -> None:
    invite, answer = invite_and_answer((4001, 0, 4001))
    attempts = {**call_relays.udp_relay_attempts(invite, answer, True, 0, {0, 1, 2}),
                "relay-0": lambda: None, "udp-punch": lambda: None}
    staggers = call_relays.call_staggers({"udp-punch": 0.25, "relay": RELAY_STAGGER_S},
                                         attempts)  # type: ignore[arg-type]
    assert stagger_for("udp-punch", staggers) == 0.25
    assert stagger_for("relay-udp-2", staggers) == RELAY_STAGGER_S
    assert stagger_for("relay-0", staggers) == \
        RELAY_STAGGER_S + call_relays.TCP_RELAY_AFTER_UDP_S
    # no datagram relay: the staggers are left as they are
    plain = {"relay": RELAY_STAGGER_S}
    assert call_relays.call_staggers(plain, {"relay-0": lambda: None}) is plain  # type: ignore[dict-item]

"""Flaw 3 (the dialling half): a caller names the addresses the callee dials.

The attacker signs an invite with its own key, naming as its candidates a TCP service and a
UDP socket it runs on 127.x (standing for anything on the callee's machine or LAN), host
names, and link-local/multicast addresses. The callee is a real :class:`MediaService` on real
sockets whose supernode saw it at a public address (its AttachOk), i.e. a client on the
internet; it does what it does once it answers an invite: build its path attempts from the
invite's candidates and race them (``Paths.attempts`` + ``connect_as_responder``, the service's own
securer). It must never connect to, or send a datagram to, the loopback service, and must
refuse host names when parsing the invite.

The control: the same attack against a callee whose own reflexive address is loopback (the
whole overlay on one machine, as in the demo) does reach the listener, so the test sees
dialling when it happens.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from overlay.core.identity import Identity
from overlay.media.connect import NoPath, connect_as_responder
from overlay.media.service import MediaService
from overlay.media.session import MediaConfig, Session
from overlay.media.signalling import (
    Candidates,
    MediaKeys,
    Offer,
    SignallingError,
    new_session_id,
    open_offer,
    sign_offer,
    transcript_hash,
)
from tests.helpers.media_attachment import FakeAttachment
from tests.helpers.media_attacker import Listener
from tests.helpers.netutil import loopback_ips

PUBLIC_REFLEXIVE = "198.51.100.7"


class UdpCounter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1


def malicious_invite(tcp: tuple[tuple[str, int], ...], udp: tuple[tuple[str, int], ...]
                     ) -> bytes:
    mallory = Identity.generate()
    offer = Offer("invite", new_session_id(), "mallory", "phone", mallory.public_key, "bob",
                  MediaKeys().public, Candidates(tcp, udp, "public", True), time.time())
    return sign_offer(offer, mallory).wire


async def callee_answers(reflexive: str, invite_wire: bytes, inbox: Path,
                         own_ip: str, race: bool = True) -> dict[str, Any]:
    """The callee's side of the race for this invite; returns the attempts it made.

    With ``race=False`` the attempts are only built, never run: for addresses off this
    machine (link-local, multicast, ...), which a test must never send anything to, even
    when the policy under test is broken."""
    bob = Identity.generate()
    service = MediaService(MediaConfig(bob, "bob", "laptop", inbox), FakeAttachment(reflexive))
    await service.start()
    try:
        invite = open_offer(invite_wire)
        s = Session(invite.session_id, invite.from_user, initiator=False)
        assert service.udp is not None
        local = Candidates(((own_ip, service.listener.port),),
                           ((own_ip, service.udp.media.local_address[1]),), "cone", True)
        answer = sign_offer(Offer("answer", s.session_id, "bob", "laptop", bob.public_key,
                                  "mallory", s.keys.public, local, time.time()), bob)
        shared = s.keys.shared_secret(invite.ephemeral)
        transcript = transcript_hash(invite, answer)
        attempts = service.paths.attempts(s, local, invite.candidates, shared, transcript)
        if not race:
            return attempts
        with pytest.raises(NoPath):
            await connect_as_responder(attempts, service.paths.securer(s, shared, transcript),
                                       timeout=2.5)
        return attempts
    finally:
        await service.stop()


async def attacker_services(ip: str) -> tuple[Listener, UdpCounter, Any, tuple[str, int],
                                              tuple[str, int]]:
    listener = Listener()
    tcp_addr = await listener.start(ip)
    transport, counter = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpCounter, local_addr=(ip, 0))
    udp_addr = transport.get_extra_info("sockname")[:2]
    return listener, counter, transport, tcp_addr, udp_addr


async def test_a_caller_cannot_make_an_internet_callee_dial_its_loopback(tmp_path) -> None:
    attacker_ip, callee_ip = loopback_ips(2)
    listener, udp, transport, tcp_addr, udp_addr = await attacker_services(attacker_ip)
    try:
        await callee_answers(PUBLIC_REFLEXIVE, malicious_invite((tcp_addr,), (udp_addr,)),
                             tmp_path / "inbox", callee_ip)
        accepted = [listener.accepted.get_nowait() for _ in range(listener.accepted.qsize())]
        written = [await s.recv(65536) for s in accepted]
        assert listener.count == 0, (
            f"the callee connected to the caller-named {tcp_addr} and wrote {written!r}")
        assert udp.datagrams == 0, (
            f"the callee sent {udp.datagrams} datagrams to the caller-named {udp_addr}")
    finally:
        transport.close()
        await listener.stop()


async def test_control_loopback_is_dialled_when_the_overlay_is_local(tmp_path) -> None:
    """Not an attack: the same invite on a one-machine overlay reaches the listener (the
    harness above would see a dial)."""
    attacker_ip, callee_ip = loopback_ips(2)
    listener, udp, transport, tcp_addr, udp_addr = await attacker_services(attacker_ip)
    try:
        await callee_answers("127.0.0.1", malicious_invite((tcp_addr,), (udp_addr,)),
                             tmp_path / "inbox", callee_ip)
        assert listener.count >= 1
        assert udp.datagrams >= 1
    finally:
        transport.close()
        await listener.stop()


@pytest.mark.parametrize("host", ["localhost", "evil.example", "printer.local"])
def test_host_names_are_refused_when_the_invite_is_parsed(host: str) -> None:
    wire = malicious_invite(((host, 631),), ())
    with pytest.raises(SignallingError):
        open_offer(wire)
    with pytest.raises(SignallingError):
        open_offer(malicious_invite((), ((host, 5353),)))


async def test_link_local_multicast_and_unspecified_are_never_dialled(tmp_path) -> None:
    callee_ip = loopback_ips(1)[0]
    never = (("169.254.169.254", 80), ("224.0.0.251", 5353), ("fe80::1", 22),
             ("0.0.0.0", 22), ("255.255.255.255", 9))
    for reflexive in (PUBLIC_REFLEXIVE, "127.0.0.1"):
        attempts = await callee_answers(reflexive, malicious_invite(never[:4], never),
                                        tmp_path / "inbox", callee_ip, race=False)
        dials = sorted(n for n in attempts
                       if n.startswith(("tcp-dial", "tcp-punch")) or n == "udp-punch")
        assert dials == [], f"the callee (reflexive {reflexive}) tried {dials} for {never}"

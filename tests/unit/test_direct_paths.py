"""The rule that starts the relay at once: no direct path known to work between two sides'
candidates (:mod:`overlay.media.direct_paths`), against the NAT lab's connectivity matrix;
and the race preferring a direct path that authenticates just after a relay."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from overlay.media.connect import connect_as_initiator
from overlay.media.direct_paths import (
    PREFER_DIRECT_S,
    direct_ruled_out,
    known_listener,
    one_network,
    plan,
)
from overlay.media.signalling import Candidates
from overlay.media.stream import MediaStream, TcpByteStream

#: what each lab router kind announces (binding.classify; ``reachable``: the supernode's
#: dial-back, which every client asks for once attached, reached it: the public host's only)
KIND_CANDIDATES = {
    "public": Candidates((("198.18.0.5", 4000),), (("198.18.0.5", 5000),), "public", True),
    "firewalled": Candidates((("198.18.0.11", 4000),), (("198.18.0.11", 5000),), "public",
                             False),
    "cone": Candidates((("198.19.3.2", 4000), ("198.18.1.3", 4000)),
                       (("198.19.3.2", 5000), ("198.18.1.3", 5000)), "cone", False),
    "symmetric": Candidates((("198.19.4.2", 4000), ("198.18.1.4", 4000)),
                            (("198.19.4.2", 5000), ("198.18.1.4", 5001),
                             ("198.18.1.4", 5002)), "symmetric", False),
    "tcp-only": Candidates((("198.19.5.2", 4000), ("198.18.1.5", 4000)), (), "no-udp", False),
}
KINDS = tuple(KIND_CANDIDATES)


def lab_needs_relay(a: str, b: str) -> bool:
    """tests/lab/test_connectivity_lab.EXPECTED: relay for symmetric with symmetric (no UDP
    port to aim at on either side) and symmetric with tcp-only (no UDP on one side, a random
    TCP port on the other); TCP punching serves tcp-only with the rest, birthday punching
    symmetric with cone and firewalled, a dial public with anything."""
    return {a, b} in ({"symmetric"}, {"symmetric", "tcp-only"})


@pytest.mark.parametrize("a", KINDS)
@pytest.mark.parametrize("b", KINDS)
def test_the_relay_starts_at_once_exactly_for_the_relay_pairs_of_the_lab_matrix(
        a: str, b: str) -> None:
    local, remote = KIND_CANDIDATES[a], KIND_CANDIDATES[b]
    for one, other in ((local, remote), (remote, local)):  # both sides agree
        p = plan(one, other, False)
        at_once = p.staggers.get("relay") == 0.0
        assert at_once == lab_needs_relay(a, b), (a, b, p)
        assert p.prefer_direct_s == 0.0, (a, b, p)  # no relay pair has a public side
        assert direct_ruled_out(one, other, False) == lab_needs_relay(a, b), (a, b)


def test_punching_starts_at_once_unless_a_tcp_path_is_known_to_work() -> None:
    """TCP's 0.25 s head start goes only to a dial known to reach a listener (a reachable or
    mapped side, one network); a public side whose dial-back failed (a stateful firewall,
    which drops our SYN) or is not done yet gets none, and its TCP attempts run on beside
    the punched path for a file to move to."""
    cone, fw, public = (KIND_CANDIDATES[k] for k in ("cone", "firewalled", "public"))
    assert plan(cone, cone, False).staggers == {"udp-punch": 0.0}
    assert plan(cone, public, False).staggers == {}  # the callee's listener takes our dial
    assert plan(public, cone, False).staggers == {}  # the callee dials us
    for one, other in ((cone, fw), (fw, cone), (fw, fw)):
        assert plan(one, other, False).staggers == {"udp-punch": 0.0}
        moving = plan(one, other, False, upgrade=True)
        assert moving.staggers == {"udp-punch": 0.0} and moving.from_udp
        # one network: the dial over it is known to work, and keeps its head start
        assert plan(one, other, True, upgrade=True).staggers == {}
    unchecked = replace(public, reachable=False)  # its dial-back not answered yet
    assert plan(cone, unchecked, False) == plan(cone, fw, False)
    assert plan(unchecked, cone, False, upgrade=True).from_udp


@pytest.mark.parametrize("a", KINDS)
@pytest.mark.parametrize("b", KINDS)
def test_udp_goes_first_where_tcp_may_work_and_punching_too(a: str, b: str) -> None:
    """UDP first, upgrade to TCP: a pair with a side TCP may reach (public, firewalled) and
    UDP punching between them punches at once and keeps TCP running to move to; both sides
    agree; nothing changes on one network. Without ``udp_first`` the same holds where TCP
    only may work (no side known to take a dial: the firewalled one)."""
    local, remote = KIND_CANDIDATES[a], KIND_CANDIDATES[b]
    base = plan(local, remote, False, upgrade=True)
    first = plan(local, remote, False, upgrade=True, udp_first=True)
    assert plan(remote, local, False, upgrade=True, udp_first=True) == first
    assert plan(remote, local, False, upgrade=True) == base
    untranslated = "public" in (local.nat, remote.nat)
    known = local.reachable or remote.reachable
    punched = "no-udp" not in (local.nat, remote.nat) \
        and {local.nat, remote.nat} != {"symmetric"}
    assert first.from_udp == untranslated, (a, b, first)
    if first.from_udp:
        assert first.staggers == {**base.staggers, "udp-punch": 0.0}
    else:
        assert first == base
    assert base.from_udp == (untranslated and not known), (a, b, base)
    assert plan(local, remote, True, upgrade=True, udp_first=True) == \
        plan(local, remote, True, upgrade=True)
    if untranslated and punched and {local.nat, remote.nat} <= {"public", "cone"}:
        assert first.staggers["udp-punch"] == 0.0
        assert ("udp-punch" in base.staggers) == (not known), (a, b, base)


def test_one_network_or_a_mapping_keeps_the_direct_paths() -> None:
    sym, tcp_only = KIND_CANDIDATES["symmetric"], KIND_CANDIDATES["tcp-only"]
    assert not direct_ruled_out(sym, tcp_only, True)
    assert plan(sym, tcp_only, True).staggers == {}
    mapped = Candidates((*tcp_only.tcp, ("203.0.113.9", 4000)), (), "no-udp", False,
                        mapped_tcp=(("203.0.113.9", 4000),))
    assert not direct_ruled_out(sym, mapped, False)
    assert "relay" not in plan(sym, mapped, False).staggers
    # one network: both behind one public address, or the overlay on one machine
    assert one_network(["198.18.1.4"], sym)
    assert one_network(["127.0.0.1"], tcp_only)
    assert not one_network(["198.18.1.9"], sym)


async def test_a_direct_path_just_after_a_relay_is_selected() -> None:
    """Real loopback TCP: the "relay" authenticates first, the direct path 30 ms later; with
    the preference the direct one is selected, without it the relay."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    def after(delay: float):
        async def attempt() -> MediaStream:
            await asyncio.sleep(delay)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return TcpByteStream(reader, writer)
        return attempt

    async def secure(raw: MediaStream) -> MediaStream:
        return raw

    try:
        for prefer, expected in ((PREFER_DIRECT_S, "tcp-accept"), (0.0, "relay-0")):
            stream, timeline = await connect_as_initiator(
                {"relay-0": after(0.0), "tcp-accept": after(0.03)}, secure,
                staggers={"relay": 0.0}, prefer_direct_s=prefer)
            await stream.close()
            assert timeline.selected == expected, timeline.events
        # no direct path comes: the relay is selected after the wait
        stream, timeline = await connect_as_initiator(
            {"relay-0": after(0.0), "tcp-accept": after(5.0)}, secure,
            staggers={"relay": 0.0}, prefer_direct_s=PREFER_DIRECT_S)
        await stream.close()
        assert timeline.selected == "relay-0"
        chosen = next(t for t, e in timeline.events if e == "selected relay-0")
        assert PREFER_DIRECT_S * 0.9 <= chosen < 1.0, timeline.events
    finally:
        server.close()


def test_a_caller_writes_first_only_where_the_callees_listener_is_known_to_be() -> None:
    own = ("198.18.0.9",)
    public, cone = KIND_CANDIDATES["public"], KIND_CANDIDATES["cone"]
    # an untranslated socket: its public address is its own
    assert known_listener(public, ("198.18.0.5", 4000), own)
    # a NATed peer's public address with its listener's port is a guess (its router may
    # forward that port to someone else's listener), and its LAN address is not ours
    assert not known_listener(cone, ("198.18.1.3", 4000), own)
    assert not known_listener(cone, ("198.19.3.2", 4000), own)
    # unless the supernode's dial-back reached it, or its router mapped it
    assert known_listener(replace(cone, reachable=True), ("198.18.1.3", 4000), own)
    mapped = replace(cone, tcp=(*cone.tcp, ("198.18.1.3", 7000)),
                     mapped_tcp=(("198.18.1.3", 7000),))
    assert known_listener(mapped, ("198.18.1.3", 7000), own)
    assert not known_listener(mapped, ("198.18.1.3", 4000), own)
    # the whole overlay on this machine
    local = Candidates((("127.0.0.1", 4000),), (), "public", False)
    assert known_listener(local, ("127.0.0.1", 4000), ("127.0.0.1",))

"""Port mapping: the PCP / NAT-PMP messages byte for byte (RFC 6887 section 7 and 11,
RFC 6886 section 3), the sans-IO client's timing (retransmits, fallback, renewal at half the
lifetime, delete on close, what it ignores), gateway discovery, and the asyncio adapter
against the lab's real responder (``tools/natlab/portmapd.py``) on a loopback address."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from overlay.media.direct_paths import punch_needs_mapping
from overlay.media.portmap import (
    RETRANSMITS,
    Deleted,
    Lost,
    Mapped,
    PortMapper,
    RouterReset,
    Unavailable,
    behind_nat,
)
from overlay.media.portmap_io import (
    RETRY_AFTER_S,
    PortMapping,
    PortMaps,
    parse_default_gateway,
)
from overlay.media.portmap_wire import (
    BadPortMapMessage,
    PcpMapRequest,
    PcpMapResponse,
    PmpErrorResponse,
    PmpExternalRequest,
    PmpExternalResponse,
    PmpMapRequest,
    PmpMapResponse,
    decode_response,
)
from overlay.media.signalling import Candidates, SignallingError
from overlay.media.techniques import technique
from tests.helpers.repo import REPO

pytestmark = pytest.mark.unit

GW = "198.19.7.1"
ME = "198.19.7.2"
EXT = "198.18.0.17"
NONCE = bytes(range(12))


def mapped16(ip: str) -> bytes:
    return bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(ip).packed


def pcp_answer(result: int = 0, lifetime: int = 600, nonce: bytes = NONCE, proto: int = 6,
               internal: int = 5000, external: int = 40000, ip: str = EXT,
               epoch: int = 7) -> bytes:
    """A PCP MAP response as RFC 6887 lays it out, built field by field."""
    header = bytes([2, 0x81, 0, result]) + struct.pack("!II", lifetime, epoch) + bytes(12)
    return header + nonce + bytes([proto, 0, 0, 0]) + struct.pack("!HH", internal, external) \
        + mapped16(ip)


def pmp_map_answer(op: int = 2, result: int = 0, internal: int = 5000, external: int = 40000,
                   lifetime: int = 600) -> bytes:
    return bytes([0, 128 + op]) + struct.pack("!HIHHI", result, 7, internal, external, lifetime)


def pmp_external_answer(ip: str = EXT) -> bytes:
    return bytes([0, 128]) + struct.pack("!HI", 0, 7) + ipaddress.IPv4Address(ip).packed


# -- messages ----------------------------------------------------------------------------------


def test_pcp_map_request_is_laid_out_as_rfc_6887_says() -> None:
    wire = PcpMapRequest(NONCE, "udp", 5000, 7200, ME, suggested_port=5000).encode()
    assert len(wire) == 60
    assert wire[0] == 2 and wire[1] == 1 and wire[2:4] == b"\0\0"  # version, R=0 MAP, reserved
    assert struct.unpack("!I", wire[4:8]) == (7200,)                # requested lifetime
    assert wire[8:24] == mapped16(ME)                               # client IP, v4-mapped
    assert wire[24:36] == NONCE                                     # mapping nonce
    assert wire[36] == 17 and wire[37:40] == b"\0\0\0"              # protocol UDP, reserved
    assert struct.unpack("!HH", wire[40:44]) == (5000, 5000)        # internal, suggested
    assert wire[44:60] == mapped16("0.0.0.0")                       # suggested external IP


def test_nat_pmp_requests_are_laid_out_as_rfc_6886_says() -> None:
    assert PmpExternalRequest().encode() == b"\x00\x00"
    wire = PmpMapRequest("tcp", 5000, 3600, 6000).encode()
    assert wire == bytes([0, 2, 0, 0]) + struct.pack("!HHI", 5000, 6000, 3600)
    assert PmpMapRequest("udp", 5000, 0).encode()[1] == 1


def test_responses_decode_into_their_fields() -> None:
    assert decode_response(pcp_answer()) == PcpMapResponse(0, 600, 7, NONCE, 6, 5000, 40000, EXT)
    assert decode_response(pmp_map_answer()) == PmpMapResponse("tcp", 0, 7, 5000, 40000, 600)
    assert decode_response(pmp_external_answer()) == PmpExternalResponse(0, 7, EXT)
    # a NAT-PMP-only router's answer to a PCP MAP request: "unsupported version", 8 bytes
    assert decode_response(bytes([0, 129, 0, 1, 0, 0, 0, 9])) == PmpErrorResponse(1, 1, 9)
    # a PCP error without the MAP payload (the router could not parse ours)
    err = bytes([2, 0x81, 0, 3]) + struct.pack("!II", 30, 7) + bytes(12)
    assert decode_response(err) == PcpMapResponse(3, 30, 7)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x07\x80", b"\x00\x02" + bytes(14),          # empty, short, version 7, request
    pmp_map_answer()[:15], pmp_map_answer() + b"\0",             # wrong NAT-PMP lengths
    bytes([0, 128, 0, 0, 0, 0, 0, 0]),                           # success needs the address
    pcp_answer()[:58], pcp_answer()[:40], pcp_answer() + bytes(1100),  # PCP sizes
    bytes([2, 0x01]) + pcp_answer()[2:],                         # a PCP request, not an answer
    bytes([2, 0x81, 0, 0]) + bytes(20),                          # success without the payload
    bytes([0, 128 + 9]) + bytes(14),                             # unknown NAT-PMP opcode
])
def test_malformed_answers_raise_only_the_typed_error(data: bytes) -> None:
    with pytest.raises(BadPortMapMessage):
        decode_response(data)


# -- the sans-IO client -------------------------------------------------------------------------


def mapper(lifetime: int = 7200) -> PortMapper:
    m = PortMapper(GW, ME, "tcp", 5000, NONCE, lifetime)
    m.start(0.0)
    return m


def events(m: PortMapper) -> list[object]:
    out = []
    while (e := m.next_event()) is not None:
        out.append(e)
    return out


def test_pcp_first_retransmitted_quickly_then_nat_pmp_then_unavailable() -> None:
    m = mapper()
    sent = m.datagrams_to_send(0.0)
    assert [(d[0], addr) for d, addr in sent] == [(2, (GW, 5351))]
    now, pcp_sends = 0.0, 1
    for gap in RETRANSMITS:
        now += gap
        assert m.get_timer() == pytest.approx(now)
        m.handle_timer(now)
        versions = [d[0] for d, _ in m.datagrams_to_send(now)]
        pcp_sends += versions.count(2)
    assert pcp_sends == 1 + len(RETRANSMITS) - 1 and versions == [0, 0]  # fell back
    assert m.method == "nat-pmp"
    for gap in RETRANSMITS:
        now += gap
        m.handle_timer(now)
    assert m.state == "unavailable" and m.get_timer() is None
    assert events(m) == [Unavailable("no PCP or NAT-PMP answer")]
    assert now == pytest.approx(2 * sum(RETRANSMITS)) and now < 4.0


def test_granted_mapping_is_renewed_at_half_lifetime_with_the_same_nonce() -> None:
    m = mapper()
    first = m.datagrams_to_send(0.0)[0][0]
    m.receive_datagram(pcp_answer(lifetime=600), (GW, 5351), 0.01)
    assert m.state == "mapped" and m.mapping is not None
    assert m.mapping.external == (EXT, 40000) and m.mapping.method == "pcp"
    assert events(m) == [Mapped(m.mapping, renewed=False)]
    assert m.get_timer() == pytest.approx(300.01)
    m.handle_timer(300.01)
    renewal = m.datagrams_to_send(300.01)[0][0]
    assert renewal[24:36] == first[24:36] == NONCE
    assert struct.unpack("!H", renewal[42:44]) == (40000,) and renewal[44:60] == mapped16(EXT)
    m.receive_datagram(pcp_answer(lifetime=600, epoch=307), (GW, 5351), 300.02)
    (ev,) = events(m)
    assert isinstance(ev, Mapped) and ev.renewed and m.get_timer() == pytest.approx(600.02)


def test_unanswered_renewals_retry_then_the_mapping_is_lost_at_expiry() -> None:
    m = mapper()
    m.receive_datagram(pcp_answer(lifetime=10), (GW, 5351), 0.0)
    events(m)
    now, renewals = 0.0, 0
    while m.state == "mapped" and now < 20:
        timer = m.get_timer()
        assert timer is not None
        now = timer
        m.handle_timer(now)
        renewals += sum(1 for d, _ in m.datagrams_to_send(now) if d[0] == 2)
    assert m.state == "lost" and m.mapping is None and now == pytest.approx(10.0)
    assert isinstance(events(m)[0], Lost) and renewals >= 6  # tried more than once


def test_a_router_whose_epoch_goes_back_lost_its_mappings() -> None:
    m = mapper()
    m.receive_datagram(pcp_answer(epoch=1000), (GW, 5351), 0.0)
    m.handle_timer(300.0)  # the renewal's answer says epoch 3: the router restarted
    m.receive_datagram(pcp_answer(epoch=3), (GW, 5351), 300.0)
    evs = events(m)
    assert [type(e) for e in evs] == [Mapped, Mapped, RouterReset]
    sibling = mapper()  # another mapping at the same router: renewed at once
    sibling.receive_datagram(pcp_answer(), (GW, 5351), 0.0)
    sibling.datagrams_to_send(0.0)
    sibling.renew_now(300.0)
    assert sibling.get_timer() == 300.0
    sibling.handle_timer(300.0)
    assert len(sibling.datagrams_to_send(300.0)) == 1
    steady = mapper()  # an epoch that keeps time with our clock is no restart
    steady.receive_datagram(pcp_answer(epoch=1000), (GW, 5351), 0.0)
    steady.handle_timer(300.0)
    steady.receive_datagram(pcp_answer(epoch=1300), (GW, 5351), 300.0)
    assert RouterReset() not in events(steady)


def test_close_deletes_with_lifetime_zero_and_waits_for_the_answer() -> None:
    m = mapper()
    m.datagrams_to_send(0.0)
    m.receive_datagram(pcp_answer(), (GW, 5351), 0.0)
    events(m)
    m.close(1.0)
    (delete, addr), = m.datagrams_to_send(1.0)
    assert addr == (GW, 5351) and struct.unpack("!I", delete[4:8]) == (0,)
    assert delete[24:36] == NONCE and m.state == "deleting"
    m.receive_datagram(pcp_answer(lifetime=0), (GW, 5351), 1.01)
    assert m.state == "closed" and events(m) == [Deleted(confirmed=True)]
    assert m.get_timer() is None


def test_close_without_an_answer_gives_up_after_the_retransmits() -> None:
    m = mapper()
    m.receive_datagram(pcp_answer(), (GW, 5351), 0.0)
    events(m)
    m.close(1.0)
    while (t := m.get_timer()) is not None:
        m.handle_timer(t)
    assert m.state == "closed" and events(m) == [Deleted(confirmed=False)]


def test_close_while_asking_deletes_what_may_have_been_granted() -> None:
    m = mapper()
    m.datagrams_to_send(0.0)
    m.close(0.1)
    (delete, _), = m.datagrams_to_send(0.1)
    assert delete[24:36] == NONCE and struct.unpack("!I", delete[4:8]) == (0,)
    m.receive_datagram(pcp_answer(lifetime=0), (GW, 5351), 0.11)
    assert m.state == "closed" and events(m) == [Deleted(confirmed=True)]
    idle = PortMapper(GW, ME, "tcp", 5000, NONCE)
    idle.close(0.0)  # never asked: nothing to delete
    assert idle.state == "closed" and idle.datagrams_to_send(0.0) == []


def test_nat_pmp_only_router_gets_nat_pmp_at_once_and_renewal_keeps_the_port() -> None:
    m = mapper()
    m.datagrams_to_send(0.0)
    m.receive_datagram(bytes([0, 129, 0, 1, 0, 0, 0, 9]), (GW, 5351), 0.01)
    sent = [d for d, _ in m.datagrams_to_send(0.01)]
    assert sent == [PmpMapRequest("tcp", 5000, 7200, 5000).encode(), b"\x00\x00"]
    m.receive_datagram(pmp_map_answer(lifetime=100), (GW, 5351), 0.02)
    assert m.state == "requesting"  # the external address is still missing
    m.receive_datagram(pmp_external_answer(), (GW, 5351), 0.03)
    assert m.mapping is not None and m.mapping.external == (EXT, 40000)
    assert m.mapping.method == "nat-pmp"
    m.handle_timer(50.03)
    assert [d for d, _ in m.datagrams_to_send(50.03)] == [
        PmpMapRequest("tcp", 5000, 7200, 40000).encode()]


def test_refusal_is_unavailable_and_port_unreachable_ends_at_once() -> None:
    m = mapper()
    m.receive_datagram(pcp_answer(result=2), (GW, 5351), 0.01)
    assert m.state == "unavailable"
    assert events(m) == [Unavailable("the router refused: PCP NOT_AUTHORIZED")]
    m = mapper()
    m.unreachable(0.01)
    assert m.state == "unavailable" and m.get_timer() is None
    m = mapper()  # a router behind another NAT: its "external" address is private
    m.receive_datagram(pcp_answer(ip="100.64.0.7"), (GW, 5351), 0.01)
    assert m.state == "unavailable" and m.mapping is None


@pytest.mark.parametrize("data,addr", [
    (pcp_answer(), ("198.19.7.9", 5351)),          # not the gateway
    (pcp_answer(), (GW, 5350)),                   # not its PCP port
    (pcp_answer(nonce=bytes(12)), (GW, 5351)),    # another mapping's nonce
    (pcp_answer(proto=17), (GW, 5351)),           # another protocol
    (pcp_answer(internal=5001), (GW, 5351)),      # another internal port
    (b"\x5a\x0f\xc3", (GW, 5351)),              # garbage (fixed: same tests in every process)
    (pmp_map_answer(), (GW, 5351)),               # NAT-PMP while we speak PCP
])
def test_answers_that_do_not_match_are_ignored(data: bytes, addr: tuple[str, int]) -> None:
    m = mapper()
    m.receive_datagram(data, addr, 0.01)
    assert m.state == "requesting" and m.mapping is None and m.ignored == 1


def test_gateway_from_proc_net_route_and_when_to_ask() -> None:
    table = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t0007A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t0107A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "wg0\t00000000\t010013C6\t0003\t0\t0\t50\t00000000\t0\t0\t0\n"
    )
    assert parse_default_gateway(table) == "198.19.0.1"   # the lower metric
    assert parse_default_gateway(table.splitlines()[0] + "\n") is None
    assert behind_nat("198.19.3.2", "198.18.0.13")
    assert not behind_nat("198.18.0.13", "198.18.0.13")  # public or firewalled: no NAT
    assert not behind_nat("127.0.0.1", "127.0.0.1") and not behind_nat("127.0.0.1", "127.0.0.2")


def test_mapped_candidates_travel_typed_and_only_as_candidates() -> None:
    cands = Candidates((("198.19.7.2", 5000), (EXT, 40000)), ((EXT, 40001),), "symmetric",
                       False, mapped_tcp=((EXT, 40000),), mapped_udp=((EXT, 40001),))
    wire = cands.to_wire()
    assert wire[4] == [[[EXT, 40000]], [[EXT, 40001]]]
    assert Candidates.from_wire(wire) == cands
    assert len(Candidates(cands.tcp).to_wire()) == 4  # without mappings: the old shape
    with pytest.raises(SignallingError):  # a "mapped" address that is not a candidate
        Candidates.from_wire([*wire[:4], [[["198.18.0.99", 1]], []]])


def test_technique_names_how_the_selected_path_got_through() -> None:
    assert technique("tcp-dial-mapped-1", False) == "mapping"   # we dialled their mapping
    assert technique("tcp-accept", True) == "mapping"           # they came in through ours
    assert technique("tcp-accept", False) == "dial"
    assert technique("tcp-dial-0", True) == "dial"
    assert technique("udp-punch", True) == "simple"
    assert technique("udp-birthday", False) == "birthday"
    assert technique("relay-1", True) == "relay"
    assert technique("tcp-dial-lan-0", False) == "lan"               # we dialled its LAN address
    assert technique("tcp-accept", False, inbound_on_lan=True) == "lan"  # it dialled ours
    assert technique("tcp-dial-1", False, inbound_on_lan=True) == "dial"
    assert technique("udp-punch", False, punch_via_mapping=True) == "mapping"


def test_a_punch_only_a_udp_mapping_lets_through_is_the_mappings_doing() -> None:
    mapped = Candidates((), ((EXT, 40001),), "symmetric", False, mapped_udp=((EXT, 40001),))
    symmetric = Candidates((), (("198.18.0.7", 5000),), "symmetric", False)
    cone = Candidates((), (("198.18.0.8", 5000),), "cone", False)
    assert punch_needs_mapping(symmetric, mapped) and punch_needs_mapping(mapped, symmetric)
    assert not punch_needs_mapping(cone, mapped)       # cone to symmetric punches without it
    assert not punch_needs_mapping(symmetric, symmetric)  # no mapping: no punch at all


# -- the adapter against the lab's responder, on loopback ----------------------------------------


@dataclass
class Responder:
    listen: str
    proc: subprocess.Popen[str]
    method: str


def loopback_address() -> str:
    return f"127.{os.urandom(1)[0] % 200 + 20}.{os.urandom(1)[0]}.{os.urandom(1)[0] % 250 + 2}"


def start_responder(listen: str, method: str = "pcp") -> subprocess.Popen[str]:
    """``tools/natlab/portmapd.py`` on ``listen`` (no nft: rules are not installed), granting
    at most 2 s; speaking PCP and NAT-PMP, or (``method="nat-pmp"``) NAT-PMP only."""
    only = ["--nat-pmp-only"] if method == "nat-pmp" else []
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools/natlab/portmapd.py"), "--listen", listen,
         "--lan-net", "127.0.0.0/8", "--wan-if", "lo", "--wan-ip", "198.18.0.99",
         "--max-lifetime", "2", "--no-nft", *only],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "ready"
    return proc


@pytest.fixture(params=["pcp", "nat-pmp"])
def responder(request: pytest.FixtureRequest) -> Iterator[Responder]:
    listen = loopback_address()
    proc = start_responder(listen, request.param)
    try:
        yield Responder(listen, proc, request.param)
    finally:
        proc.terminate()
        proc.wait(5)


def test_adapter_maps_renews_and_deletes_with_the_real_responder(responder: Responder) -> None:
    listen, proc = responder.listen, responder.proc

    async def run() -> PortMapping:
        mapping = await PortMapping.open(listen, "udp", 45678)
        renewed = asyncio.Event()
        mapping.on_event = lambda e: renewed.set() if isinstance(e, Mapped) and e.renewed \
            else None
        async with asyncio.timeout(3):
            await mapping.settled.wait()
        assert mapping.mapping is not None
        assert mapping.mapping.external == ("198.18.0.99", 45678)
        assert mapping.mapping.lifetime == 2  # the responder's cap, not our 7200
        assert mapping.mapping.method == responder.method
        async with asyncio.timeout(3):  # renewed at half of 2 s
            await renewed.wait()
        await mapping.close()
        return mapping

    mapping = asyncio.run(run())
    assert mapping.mapper.state == "closed" and mapping.renewals >= 1
    assert mapping.time_to_map is not None and mapping.time_to_map < 1.0
    proc.terminate()
    assert proc.stdout is not None
    seen = [json.loads(line)["event"] for line in proc.stdout.read().splitlines()]
    assert seen[0] == "map" and "renew" in seen and "delete" in seen, seen
    assert "expire" not in seen  # deleted by us, not timed out


def test_lost_or_unavailable_mappings_are_asked_for_again_later() -> None:
    listen = loopback_address()  # nothing listens there yet: ICMP port unreachable

    async def run() -> None:
        maps = PortMaps()
        await maps.start(listen, 45679, None)
        await maps.wait_settled(3)
        assert maps.maps["tcp"].state == "unavailable" and maps.mapped("tcp") == ()
        proc = start_responder(listen)
        try:
            await maps.retry(time.monotonic())  # too soon: not asked again
            assert maps.maps["tcp"].state == "unavailable"
            await maps.retry(time.monotonic() + RETRY_AFTER_S)
            await maps.wait_settled(3)
            assert maps.mapped("tcp") == (("198.18.0.99", 45679),)
            await maps.close()
        finally:
            proc.terminate()
            proc.wait(5)

    asyncio.run(run())

"""The NAT lab's ``cgnat`` kind (a home NAT behind a carrier NAT) and hosts sharing one
router (``"router": OWNER``), against the real kernel (tools/natlab). Needs root."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.test_natlab import assert_silent, hole_punch, leftovers, probe, start_server
from tools.natlab import Lab

pytestmark = pytest.mark.netlab

TOPOLOGY: dict[str, Any] = {
    "hosts": {
        "s1": {"kind": "public"},
        "s2": {"kind": "public"},
        "g1": {"kind": "cgnat"},
        "g2": {"kind": "cgnat"},
        "c1": {"kind": "cone"},
        "y1": {"kind": "symmetric"},
        "c1b": {"router": "c1"},   # on c1's LAN
        "g1b": {"router": "g1"},   # on g1's LAN, behind both of g1's NATs
    }
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(TOPOLOGY) as lab:
        yield lab
    assert leftovers(lab.prefix) == []


@pytest.fixture(scope="module")
def reflectors(lab: Lab) -> dict[str, str]:
    out = {}
    for host in ("s1", "s2"):
        _proc, port = start_server(lab, host, "udp-reflector")
        out[host] = f"{lab.public_ip(host)}:{port}"
    return out


def test_cgnat_address_plan(lab: Lab) -> None:
    assert lab.host_ip("g1") == "198.19.3.2"
    assert lab.router_wan_ip("g1") == "100.64.3.2"  # the home router's WAN: CGN space
    assert lab.public_ip("g1") == "198.18.0.13"     # the carrier router's WAN
    addrs = lab.run("g1", ["ip", "-4", "-o", "addr"], carrier=True, check=True).stdout
    assert "198.18.0.13/24" in addrs and "100.64.3.1/24" in addrs
    for router in ({"router": True}, {"carrier": True}):
        chain = lab.run("g1", ["nft", "list", "chain", "inet", "natlab", "input"],
                        check=True, **router).stdout
        assert "policy drop;" in chain


def test_cgnat_maps_endpoint_independently_through_both_nats(
    lab: Lab, reflectors: dict[str, str]
) -> None:
    res = probe(lab, "g1", "udp-query", reflectors["s1"], reflectors["s2"])
    seen = [r["seen"] for r in res["results"]]
    assert all(s is not None for s in seen), res
    assert {s[0] for s in seen} == {lab.public_ip("g1")}
    assert len({s[1] for s in seen}) == 1, f"both NATs must map endpoint-independently: {res}"


def test_cgnat_drops_unsolicited_inbound(lab: Lab) -> None:
    server, port = start_server(lab, "g1", "tcp-server")
    for target in (lab.public_ip("g1"), lab.host_ip("g1")):
        res = probe(lab, "s1", "tcp-connect", target, str(port), "--timeout", "1")
        assert not res["ok"], res
    # nor from the carrier's side of the home router (another customer of the carrier)
    res = probe(lab, "g1", "tcp-connect", lab.router_wan_ip("g1") or "", str(port),
                "--timeout", "1")
    assert not res["ok"], res
    assert_silent(server)
    udp_server, udp_port = start_server(lab, "g1", "udp-reflector")
    probe(lab, "s1", "udp-send", lab.public_ip("g1"), str(udp_port), "--count", "3")
    assert_silent(udp_server)


@pytest.mark.parametrize("peer", ["c1", "g2"])
def test_hole_punching_from_cgnat_succeeds(
    lab: Lab, reflectors: dict[str, str], peer: str
) -> None:
    ra, rb, reflexive = hole_punch(lab, "g1", peer, reflectors["s1"], timeout=5.0)
    assert ra["ok"] and rb["ok"], (ra, rb)
    assert ra["peer_seen"] == reflexive[peer]
    assert rb["peer_seen"] == reflexive["g1"]


def test_hole_punching_between_cgnat_and_symmetric_fails(
    lab: Lab, reflectors: dict[str, str]
) -> None:
    ra, rb, _ = hole_punch(lab, "g1", "y1", reflectors["s1"], timeout=2.0)
    assert not (ra["ok"] and rb["ok"]), (ra, rb)


@pytest.mark.parametrize(("owner", "member"), [("c1", "c1b"), ("g1", "g1b")])
def test_hosts_sharing_a_router_reach_each_other_over_the_lan(
    lab: Lab, reflectors: dict[str, str], owner: str, member: str
) -> None:
    assert lab.kind(member) == lab.kind(owner)
    assert lab.public_ip(member) == lab.public_ip(owner)
    assert lab.host_ip(member) == lab.host_ip(owner)[:-1] + "3"
    # the same public address on the way out
    res = probe(lab, member, "udp-query", reflectors["s1"])
    assert res["results"][0]["seen"][0] == lab.public_ip(owner)
    # straight over the LAN: the peer sees the LAN address, not the router's
    server, port = start_server(lab, owner, "tcp-server")
    res = probe(lab, member, "tcp-connect", lab.host_ip(owner), str(port))
    assert res["ok"] and res["seen"][0] == lab.host_ip(member), res
    assert server.read_json(5.0)["event"] == "accept"
    # and the router's input still drops what the public segment sends unasked
    res = probe(lab, "s1", "tcp-connect", lab.public_ip(member), str(port), "--timeout", "1")
    assert not res["ok"], res

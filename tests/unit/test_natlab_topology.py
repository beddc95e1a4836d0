"""The NAT lab's topology validation for ``cgnat`` and shared routers (no root needed)."""

from __future__ import annotations

from typing import Any

import pytest

from tools.natlab import Topology, TopologyError


def topo(**hosts: dict[str, Any]) -> Topology:
    return Topology.from_dict({"hosts": hosts})


def test_cgnat_address_plan() -> None:
    g = topo(a={"kind": "public"}, g={"kind": "cgnat"}).host("g")
    assert (g.host_ip, g.router_lan_ip, g.router_wan_ip, g.carrier_lan_ip, g.public_ip) == (
        "198.19.2.2", "198.19.2.1", "100.64.2.2", "100.64.2.1", "198.18.0.12")
    assert g.carrier and g.owns_router


def test_hosts_sharing_a_router_get_the_next_lan_addresses() -> None:
    t = topo(a={"kind": "cone"}, x={"kind": "symmetric"}, b={"router": "a"},
             c={"router": "a", "kind": "cone"})
    a, b, c = t.host("a"), t.host("b"), t.host("c")
    assert [h.host_ip for h in (a, b, c)] == ["198.19.1.2", "198.19.1.3", "198.19.1.4"]
    assert {h.public_ip for h in (a, b, c)} == {"198.18.0.11"}
    assert b.kind == c.kind == "cone" and not b.owns_router and a.owns_router
    assert [h.name for h in t.lan_members("a")] == ["b", "c"]
    assert t.host("x").host_ip == "198.19.2.2"


@pytest.mark.parametrize(("hosts", "message"), [
    ({"b": {"router": "a"}, "a": {"kind": "cone"}}, "declared before"),
    ({"a": {"kind": "cone"}, "b": {"router": "nope"}}, "declared before"),
    ({"a": {"router": "a"}}, "names the host itself"),
    ({"a": {"kind": "cone"}, "b": {"router": 3}}, "must be the name of another host"),
    ({"a": {"kind": "public"}, "b": {"router": "a"}}, "only a NAT router can be shared"),
    ({"a": {"kind": "firewalled"}, "b": {"router": "a"}}, "only a NAT router can be shared"),
    ({"a": {"kind": "cone"}, "b": {"router": "a", "kind": "symmetric"}}, "leave kind out"),
    ({"a": {"kind": "cone"}, "b": {"router": "a", "netem": {"delay_ms": 5}}},
     "netem belongs to the router's owner"),
    ({"a": {"kind": "mapping"}, "b": {"router": "a", "max_lifetime_s": 5}},
     "max_lifetime_s belongs"),
    ({"a": {"kind": "cone"}, "b": {"router": "a"}, "c": {"router": "b"}},
     "shares the router of 'a'; name 'a' instead"),
])
def test_shared_router_validation(hosts: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology.from_dict({"hosts": hosts})

"""Topology description of a NAT lab and its deterministic address plan.

A topology is plain data::

    {"hosts": {
        "boot": {"kind": "public"},
        "a1": {"kind": "cone", "netem": {"delay_ms": 100, "loss_pct": 2}},
    }}

or the same as TOML (``[hosts.boot]`` / ``kind = "public"`` ...).

Addresses are assigned by the host's position ``n`` (1-based, in declaration order):

* public segment ``198.18.0.0/24`` (one L2 bridge):
  - ``public`` host n: ``198.18.0.(10+n)``
  - ``firewalled`` host n: ``198.18.0.(10+n)`` (routed to it through its router), router WAN
    ``198.18.0.(130+n)``
  - NATed host n (``cone``, ``symmetric``, ``tcp-only``, ``mapping``): router WAN
    ``198.18.0.(10+n)``
  - ``cgnat`` host n: the carrier router's WAN ``198.18.0.(10+n)``; between the carrier router
    (``100.64.n.1``) and the home router (``100.64.n.2``) carrier-grade NAT space
    ``100.64.n.0/24``
* LAN of host n: ``198.19.n.0/24``, router ``198.19.n.1``, host ``198.19.n.2`` (a firewalled
  host carries its public address instead).
* a host with ``"router": "OWNER"`` has no router of its own: it sits on OWNER's LAN (kind
  and public address are OWNER's), at ``198.19.o.(2+k)`` (``o`` OWNER's position, ``k`` = 1
  for the first host that shares OWNER's router, 2 for the next, ...).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

Kind = Literal["public", "firewalled", "cone", "symmetric", "tcp-only", "mapping", "cgnat"]
KINDS: tuple[Kind, ...] = get_args(Kind)
ROUTED_KINDS: frozenset[Kind] = frozenset(
    {"firewalled", "cone", "symmetric", "tcp-only", "mapping", "cgnat"})
NAT_KINDS: frozenset[Kind] = frozenset({"cone", "symmetric", "tcp-only", "mapping", "cgnat"})
#: kinds whose home router sits behind a carrier router (two NATs, 100.64.0.0/10 between)
CARRIER_KINDS: frozenset[Kind] = frozenset({"cgnat"})
#: kinds whose router grants port mappings (PCP/NAT-PMP, ``tools/natlab/portmapd.py``)
MAPPING_KINDS: frozenset[Kind] = frozenset({"mapping"})
#: the longest mapping lifetime a ``mapping`` router grants unless the host says otherwise
DEFAULT_MAX_LIFETIME_S = 3600
#: how a ``mapping`` router grants mappings (``methods``), and what it speaks by default
PORTMAP_METHODS = ("pcp", "nat-pmp", "upnp")
DEFAULT_PORTMAP_METHODS = ("pcp", "nat-pmp")

PUBLIC_NET = "198.18.0.0/24"
PUBLIC_PREFIXLEN = 24
MAX_HOSTS = 120
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class TopologyError(ValueError):
    """The topology description is invalid."""


@dataclass(frozen=True)
class Netem:
    """Impairment of a host's uplink, applied to each direction separately.

    ``delay_ms`` is added to every frame in each direction (a round trip over the link gets
    ``2 * delay_ms`` more), ``jitter_ms`` adds a uniformly random extra of up to that much, and
    ``loss_pct`` percent of the frames in each direction are dropped.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Netem:
        unknown = set(data) - {"delay_ms", "jitter_ms", "loss_pct"}
        if unknown:
            raise TopologyError(f"{where}: unknown netem keys {sorted(unknown)}")
        values: dict[str, float] = {}
        for key in ("delay_ms", "jitter_ms", "loss_pct"):
            if key not in data:
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TopologyError(f"{where}: netem {key} must be a number, got {value!r}")
            if value < 0:
                raise TopologyError(f"{where}: netem {key} must be >= 0, got {value!r}")
            values[key] = float(value)
        if values.get("loss_pct", 0.0) > 100:
            raise TopologyError(f"{where}: netem loss_pct must be <= 100")
        return cls(**values)

    @property
    def active(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)


@dataclass(frozen=True)
class HostSpec:
    """One host of the lab, with its address plan."""

    name: str
    kind: Kind
    index: int  # 1-based position in the topology
    netem: Netem | None = None
    #: ``mapping`` routers: the longest lifetime (s) they grant a mapping
    max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S
    #: ``mapping`` routers: the protocols they grant mappings by
    portmap_methods: tuple[str, ...] = DEFAULT_PORTMAP_METHODS
    #: the host whose router (and LAN) this one shares; None: its own router (or none)
    router_host: str | None = None
    #: the position of the router's owner (= ``index`` unless ``router_host`` is set): it
    #: numbers the LAN and the public address
    site: int = 0
    #: the host's place on its LAN: 0 for the router's owner, 1, 2, ... for those sharing it
    slot: int = 0

    def __post_init__(self) -> None:
        if not self.site:
            object.__setattr__(self, "site", self.index)

    @property
    def routed(self) -> bool:
        """True if the host sits behind a router (its own or a shared one)."""
        return self.kind in ROUTED_KINDS

    @property
    def owns_router(self) -> bool:
        """True if the lab builds a router for this host (it shares no other host's)."""
        return self.routed and self.router_host is None

    @property
    def carrier(self) -> bool:
        """True if the host's home router sits behind a carrier router (``cgnat``)."""
        return self.kind in CARRIER_KINDS

    @property
    def public_ip(self) -> str:
        """The address the public segment sees: the host's own, or its (carrier) router's WAN
        address."""
        return f"198.18.0.{10 + self.site}"

    @property
    def host_ip(self) -> str:
        """The address configured inside the host."""
        if self.kind in ("public", "firewalled"):
            return self.public_ip
        return f"198.19.{self.site}.{2 + self.slot}"

    @property
    def router_wan_ip(self) -> str | None:
        """The WAN address of the host's router (``cgnat``: the home router's, in
        carrier-grade NAT space)."""
        if self.kind == "firewalled":
            return f"198.18.0.{130 + self.site}"
        if self.carrier:
            return f"100.64.{self.site}.2"
        if self.kind in NAT_KINDS:
            return self.public_ip
        return None

    @property
    def carrier_lan_ip(self) -> str | None:
        """``cgnat``: the carrier router's address towards the home router."""
        return f"100.64.{self.site}.1" if self.carrier else None

    @property
    def carrier_net(self) -> str | None:
        return f"100.64.{self.site}.0/24" if self.carrier else None

    @property
    def router_lan_ip(self) -> str | None:
        return f"198.19.{self.site}.1" if self.routed else None

    @property
    def lan_net(self) -> str | None:
        return f"198.19.{self.site}.0/24" if self.routed else None


@dataclass(frozen=True)
class Topology:
    hosts: tuple[HostSpec, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        if not isinstance(data, Mapping):
            raise TopologyError("topology must be a mapping with a 'hosts' table")
        unknown = set(data) - {"hosts"}
        if unknown:
            raise TopologyError(f"unknown top-level keys {sorted(unknown)}")
        hosts = data.get("hosts")
        if not isinstance(hosts, Mapping) or not hosts:
            raise TopologyError("topology needs a non-empty 'hosts' mapping")
        if len(hosts) > MAX_HOSTS:
            raise TopologyError(f"at most {MAX_HOSTS} hosts are supported, got {len(hosts)}")
        specs: list[HostSpec] = []
        for index, (name, spec) in enumerate(hosts.items(), start=1):
            where = f"host {name!r}"
            if not isinstance(name, str) or not HOST_NAME_RE.match(name):
                raise TopologyError(f"{where}: names must match {HOST_NAME_RE.pattern}")
            if not isinstance(spec, Mapping):
                raise TopologyError(f"{where}: expected a mapping, got {spec!r}")
            unknown = set(spec) - {"kind", "netem", "max_lifetime_s", "router", "methods"}
            if unknown:
                raise TopologyError(f"{where}: unknown keys {sorted(unknown)}")
            if "router" in spec:
                specs.append(_sharing(name, index, spec, specs))
                continue
            kind = spec.get("kind")
            if kind not in KINDS:
                raise TopologyError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
            netem: Netem | None = None
            if spec.get("netem") is not None:
                if not isinstance(spec["netem"], Mapping):
                    raise TopologyError(f"{where}: netem must be a mapping")
                netem = Netem.from_dict(spec["netem"], where)
                if not netem.active:
                    netem = None
            lifetime = spec.get("max_lifetime_s", DEFAULT_MAX_LIFETIME_S)
            if "max_lifetime_s" in spec and kind not in MAPPING_KINDS:
                raise TopologyError(f"{where}: max_lifetime_s is for kind 'mapping' only")
            if type(lifetime) is not int or not 1 <= lifetime <= 86400:
                raise TopologyError(f"{where}: max_lifetime_s is an integer in 1..86400")
            methods = spec.get("methods", list(DEFAULT_PORTMAP_METHODS))
            if "methods" in spec and kind not in MAPPING_KINDS:
                raise TopologyError(f"{where}: methods is for kind 'mapping' only")
            if not isinstance(methods, list) or not methods \
                    or not set(methods) <= set(PORTMAP_METHODS) or len(set(methods)) < len(methods):
                raise TopologyError(f"{where}: methods is a non-empty list of distinct "
                                    f"{list(PORTMAP_METHODS)}, got {methods!r}")
            specs.append(HostSpec(name=name, kind=cast(Kind, kind), index=index, netem=netem,
                                  max_lifetime_s=lifetime, portmap_methods=tuple(methods)))
        return cls(tuple(specs))

    def lan_members(self, owner: str) -> list[HostSpec]:
        """The hosts that share ``owner``'s router, in declaration order."""
        return [spec for spec in self.hosts if spec.router_host == owner]

    @classmethod
    def from_toml(cls, path: str | Path) -> Topology:
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise TopologyError(f"{path}: {exc}") from exc
        return cls.from_dict(data)

    def host(self, name: str) -> HostSpec:
        for spec in self.hosts:
            if spec.name == name:
                return spec
        raise KeyError(f"no host {name!r} in the topology (hosts: {self.names})")

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.hosts]


def _sharing(name: str, index: int, spec: Mapping[str, Any],
             earlier: list[HostSpec]) -> HostSpec:
    """A host given as ``{"router": OWNER}``: on OWNER's LAN, behind OWNER's router."""
    where = f"host {name!r}"
    owner_name = spec["router"]
    if not isinstance(owner_name, str):
        raise TopologyError(f"{where}: router must be the name of another host, "
                            f"got {owner_name!r}")
    if owner_name == name:
        raise TopologyError(f"{where}: router names the host itself")
    owner = next((s for s in earlier if s.name == owner_name), None)
    if owner is None:
        raise TopologyError(f"{where}: router {owner_name!r} must name a host declared "
                            "before this one")
    if owner.router_host is not None:
        raise TopologyError(f"{where}: host {owner_name!r} shares the router of "
                            f"{owner.router_host!r}; name {owner.router_host!r} instead")
    if owner.kind not in NAT_KINDS:
        raise TopologyError(f"{where}: host {owner_name!r} is {owner.kind!r}; only a NAT "
                            f"router can be shared ({sorted(NAT_KINDS)})")
    if "kind" in spec and spec["kind"] != owner.kind:
        raise TopologyError(f"{where}: kind {spec['kind']!r} differs from its router's "
                            f"({owner.kind!r}); leave kind out")
    for key in ("netem", "max_lifetime_s", "methods"):
        if key in spec:
            raise TopologyError(f"{where}: {key} belongs to the router's owner "
                                f"{owner_name!r}, not to a host that shares it")
    slot = 1 + sum(1 for s in earlier if s.router_host == owner_name)
    if 2 + slot > 254:
        raise TopologyError(f"{where}: the LAN of {owner_name!r} is full")
    return HostSpec(name=name, kind=owner.kind, index=index, max_lifetime_s=owner.max_lifetime_s,
                    portmap_methods=owner.portmap_methods, router_host=owner_name,
                    site=owner.site, slot=slot)

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
* LAN of host n: ``198.19.n.0/24``, router ``198.19.n.1``, host ``198.19.n.2`` (a firewalled
  host carries its public address instead).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

Kind = Literal["public", "firewalled", "cone", "symmetric", "tcp-only", "mapping"]
KINDS: tuple[Kind, ...] = get_args(Kind)
ROUTED_KINDS: frozenset[Kind] = frozenset(
    {"firewalled", "cone", "symmetric", "tcp-only", "mapping"})
NAT_KINDS: frozenset[Kind] = frozenset({"cone", "symmetric", "tcp-only", "mapping"})
#: kinds whose router grants port mappings (PCP/NAT-PMP, ``tools/natlab/portmapd.py``)
MAPPING_KINDS: frozenset[Kind] = frozenset({"mapping"})
#: the longest mapping lifetime a ``mapping`` router grants unless the host says otherwise
DEFAULT_MAX_LIFETIME_S = 3600

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

    @property
    def routed(self) -> bool:
        """True if the host sits behind its own router."""
        return self.kind in ROUTED_KINDS

    @property
    def public_ip(self) -> str:
        """The address the public segment sees: the host's own, or its router's WAN address."""
        return f"198.18.0.{10 + self.index}"

    @property
    def host_ip(self) -> str:
        """The address configured inside the host."""
        if self.kind in ("public", "firewalled"):
            return self.public_ip
        return f"198.19.{self.index}.2"

    @property
    def router_wan_ip(self) -> str | None:
        if self.kind == "firewalled":
            return f"198.18.0.{130 + self.index}"
        if self.kind in NAT_KINDS:
            return self.public_ip
        return None

    @property
    def router_lan_ip(self) -> str | None:
        return f"198.19.{self.index}.1" if self.routed else None

    @property
    def lan_net(self) -> str | None:
        return f"198.19.{self.index}.0/24" if self.routed else None


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
            unknown = set(spec) - {"kind", "netem", "max_lifetime_s"}
            if unknown:
                raise TopologyError(f"{where}: unknown keys {sorted(unknown)}")
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
            specs.append(HostSpec(name=name, kind=cast(Kind, kind), index=index, netem=netem,
                                  max_lifetime_s=lifetime))
        return cls(tuple(specs))

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

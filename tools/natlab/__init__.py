"""NAT lab: network namespaces with real nftables NAT for end-to-end tests.

    from tools.natlab import Lab

    with Lab({"hosts": {"boot": {"kind": "public"}, "a1": {"kind": "cone"}}}) as lab:
        lab.run("a1", ["python3", "-c", "..."])

See ``tools/natlab/README.md``.
"""

from .lab import (
    PROBE_SCRIPT,
    Lab,
    LabError,
    LabProcess,
    cleanup,
    lab_owner_alive,
    list_labs,
    list_netns,
    probe_argv,
)
from .rulesets import router_ruleset
from .topology import KINDS, HostSpec, Kind, Netem, Topology, TopologyError

__all__ = [
    "KINDS",
    "PROBE_SCRIPT",
    "HostSpec",
    "Kind",
    "Lab",
    "LabError",
    "LabProcess",
    "Netem",
    "Topology",
    "TopologyError",
    "cleanup",
    "lab_owner_alive",
    "list_labs",
    "list_netns",
    "probe_argv",
    "router_ruleset",
]

"""nftables rulesets for the lab's routers, as text for ``nft -f -`` in the router namespace.

Every router:
* drops unsolicited input to itself (input policy drop; accept established/related, ``lo`` and
  the LAN interface). Without that, an early unsolicited packet from a peer creates a conntrack
  entry for a flow to the router itself, and the host's own outbound packet to that peer then
  gets a different mapped port (hole punching races);
* forwards only what the LAN initiated (forward policy drop; accept established/related and
  what comes in on the LAN interface -- for ``tcp-only`` only TCP from the LAN).

NAT: ``cone`` masquerades (endpoint-independent mapping, the source port is kept when free),
``symmetric`` masquerades with ``random,fully-random`` (a new random port per destination),
``tcp-only`` masquerades; ``firewalled`` does no NAT (the host has a public address).
"""

from __future__ import annotations

from .topology import Kind

FILTER_TABLE = "natlab"
NAT_TABLE = "natlab_nat"


def router_ruleset(kind: Kind, wan: str, lan: str) -> str:
    """The complete ruleset for a router of ``kind`` with interfaces ``wan`` and ``lan``."""
    if kind == "public":
        raise ValueError("public hosts have no router")
    if kind == "tcp-only":
        from_lan = f'iifname "{lan}" meta l4proto tcp accept'
    else:
        from_lan = f'iifname "{lan}" oifname "{wan}" accept'
    lines = [
        f"table inet {FILTER_TABLE} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        "    ct state established,related accept",
        '    iifname "lo" accept',
        f'    iifname "{lan}" accept',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        f"    {from_lan}",
        "  }",
        "}",
    ]
    if kind != "firewalled":
        flags = " random,fully-random" if kind == "symmetric" else ""
        lines += [
            f"table ip {NAT_TABLE} {{",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    oifname "{wan}" masquerade{flags}',
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"

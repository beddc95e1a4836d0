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
``cgnat`` has two routers, each with this ruleset as ``cone`` has it: the home router (its WAN
in 100.64.0.0/10) and the carrier router (its "LAN" is the link to the home router).
``mapping`` is ``symmetric`` whose router also grants port mappings: its forward chain
accepts what was DNATed (``ct status dnat``), and the table ``ip natlab_portmap`` (empty
``prerouting``/``postrouting`` NAT chains, the latter before the masquerade) holds the DNAT
and SNAT rules that ``tools/natlab/portmapd.py`` adds and removes for the mappings it grants.
"""

from __future__ import annotations

from .topology import Kind

FILTER_TABLE = "natlab"
NAT_TABLE = "natlab_nat"
PORTMAP_TABLE = "natlab_portmap"


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
        *(["    ct status dnat accept"] if kind == "mapping" else []),
        "  }",
        "}",
    ]
    if kind != "firewalled":
        flags = " random,fully-random" if kind in ("symmetric", "mapping") else ""
        lines += [
            f"table ip {NAT_TABLE} {{",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    oifname "{wan}" masquerade{flags}',
            "  }",
            "}",
        ]
    if kind == "mapping":
        lines += [
            f"table ip {PORTMAP_TABLE} {{",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat - 1; policy accept;",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"

"""Which addresses a peer names that this client will dial (sans-IO: addresses in, verdict out).

A candidate in an invite or answer is something the other side *says*; dialling it makes this
client open a connection (and write the session id and the path salt) wherever the peer
points. So a candidate is only ever an IP literal (a host name is refused when the offer is
parsed, :func:`ip_literal`), and before dialling each one is checked by :func:`decide`:

- never: unspecified (``0.0.0.0/8``, ``::``), link-local (``169.254/16``, ``fe80::/10``),
  multicast, reserved (``240/4``, broadcast, IPv6 outside the assigned ranges);
- loopback (``127/8``, ``::1``): only when our *own* reflexive address (what our supernode
  saw, ``AttachOk``) is loopback too, i.e. the whole overlay runs on this machine (the demo
  and the process tests);
- private (RFC 1918, ``100.64.0.0/10`` carrier-grade NAT, ``fc00::/7`` unique local,
  ``fec0::/10`` site-local): only when both sides have the same public reflexive address
  (they share a LAN), or the overlay is local as above;
- anything else (public, including ``198.18.0.0/15`` which Python calls private): dialled.

IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry. :func:`on_shared_lan`
says which of the dialled candidates are addresses on the LAN both sides share (the media
service names those attempts ``tcp-dial-lan-N``; their technique is ``lan``). The peer's public
reflexive addresses are the public-scope addresses among its own candidates; a peer that
knows our public address can claim it, so "same LAN" is the peer's word (what WebRTC's host
candidates also rely on), but loopback never depends on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from overlay.core.addresses import (
    LOOPBACK,
    NEVER,
    PUBLIC,
    Address,
    ip_literal,
    scope,
)

__all__ = ["LOOPBACK", "NEVER", "PUBLIC", "Verdict", "decide", "ip_literal", "local_overlay",
           "on_shared_lan", "public_of", "scope", "select"]

@dataclass(frozen=True)
class Verdict:
    dial: bool
    reason: str


def public_of(hosts: Iterable[str]) -> frozenset[str]:
    """The public-scope addresses among ``hosts`` (normalised: IPv4-mapped unwrapped)."""
    return frozenset(str(ip_literal(h)) for h in hosts if scope(h) == PUBLIC)


def local_overlay(own_reflexive: Iterable[str]) -> bool:
    """Our own reflexive address is loopback: the whole overlay runs on this machine."""
    return any(scope(h) == LOOPBACK for h in own_reflexive)


def decide(host: str, own_reflexive: Iterable[str], peer_public: Iterable[str]) -> Verdict:
    """Whether to dial ``host``, named by a peer whose public reflexive addresses are
    ``peer_public``, given our own reflexive address(es) ``own_reflexive`` (what our
    primary supernode saw: its AttachOk)."""
    own = tuple(own_reflexive)
    kind = scope(host)
    if kind in NEVER:
        return Verdict(False, kind)
    if kind == PUBLIC:
        return Verdict(True, PUBLIC)
    if local_overlay(own):
        return Verdict(True, f"{kind}, and the overlay runs on this machine")
    if kind == LOOPBACK:
        return Verdict(False, "loopback, and our own reflexive address is not")
    if public_of(own) & frozenset(str(ip_literal(h)) for h in peer_public):
        return Verdict(True, "private, and both sides share a public address (one LAN)")
    return Verdict(False, "private, and the peer is not behind our public address")


def on_shared_lan(host: str, own_reflexive: Iterable[str], peer_public: Iterable[str]) -> bool:
    """``host``, named by a peer whose public reflexive addresses are ``peer_public``, is an
    address on a LAN we share with it: both sides have the same public reflexive address and
    ``host`` is not that address (nor loopback, nor one never dialled). Dialling it goes
    straight over the LAN, not through the router."""
    if scope(host) in (*NEVER, LOOPBACK):
        return False
    own = public_of(own_reflexive)
    if not own & frozenset(str(ip_literal(h)) for h in peer_public):
        return False
    return str(ip_literal(host)) not in own


def select(addresses: Iterable[Address], own_reflexive: Iterable[str],
           peer_public: Iterable[str]) -> tuple[tuple[Address, ...], list[tuple[Address, str]]]:
    """``(kept, dropped)``: the addresses to dial, and the others with the reason."""
    own, peer = tuple(own_reflexive), tuple(peer_public)
    kept: list[Address] = []
    dropped: list[tuple[Address, str]] = []
    for addr in addresses:
        verdict = decide(addr[0], own, peer)
        if verdict.dial:
            kept.append(addr)
        else:
            dropped.append((addr, verdict.reason))
    return tuple(kept), dropped

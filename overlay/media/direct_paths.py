"""Which direct paths two sides' candidates leave possible, and so when each attempt of the
race starts (sans-IO: both sides' :class:`~overlay.media.signalling.Candidates` in, verdicts
and start delays out).

This is the one place that says "no direct path can work between these two": both sides
compute it from the same invite and answer, so both start their relay halves at the same
moment. Today's rule is the connectivity matrix of ``tests/lab/test_connectivity_lab.py``:

- a direct TCP connection needs one side that accepts unsolicited connections (the
  supernode's dial-back reached it: ``reachable``; or a router mapping of its listener), or
  both sides on one network (one public address, or the whole overlay on one machine);
- failing that, only UDP hole punching is left, and it needs UDP on both sides and no
  ``symmetric`` NAT on either (a symmetric NAT's mapping towards the peer is not the one the
  supernodes saw, and every other NAT of ours filters by port; ``punch.punch_feasible``
  still tries symmetric against cone, in case the cone is a full or address-restricted one).

Work on TCP simultaneous open (tcp-only pairs) or birthday-style punching (symmetric against
cone) changes :func:`direct_ruled_out` here and nowhere else.

Start delays (:func:`stagger_overrides`, on top of ``connect.DEFAULT_STAGGERS``): the relay
starts at once when no direct path can work (it used to wait 1.5 s); UDP punching starts at
once when no direct TCP path can work (its 0.25 s only gives a direct TCP connection the
chance to win first).
"""

from __future__ import annotations

from collections.abc import Iterable

from overlay.media.candidate_policy import local_overlay, public_of
from overlay.media.signalling import Candidates

#: NAT classes (``binding.classify``) between which hole punching cannot work today
NO_UDP = "no-udp"
SYMMETRIC = "symmetric"


def one_network(own_reflexive: Iterable[str], remote: Candidates) -> bool:
    """Both sides share a public address (one LAN), or the whole overlay runs on this
    machine: private candidates are dialled (:mod:`.candidate_policy`)."""
    own = tuple(own_reflexive)
    peer = public_of(h for h, _ in (*remote.tcp, *remote.udp))
    return local_overlay(own) or bool(public_of(own) & peer)


def accepts_tcp(side: Candidates) -> bool:
    """Others can open TCP connections to this side (dial-back succeeded, or a mapping)."""
    return side.reachable or bool(side.mapped_tcp)


def tcp_possible(local: Candidates, remote: Candidates, same_network: bool) -> bool:
    return same_network or accepts_tcp(local) or accepts_tcp(remote)


def punch_possible(local: Candidates, remote: Candidates) -> bool:
    """Hole punching may work: UDP on both sides, neither behind a symmetric NAT (or one
    side has a router mapping of its UDP socket)."""
    if local.mapped_udp or remote.mapped_udp:
        return True
    classes = (local.nat, remote.nat)
    return NO_UDP not in classes and SYMMETRIC not in classes


def direct_ruled_out(local: Candidates, remote: Candidates, same_network: bool) -> bool:
    """No direct path (TCP either way, UDP punching) can work between these two sides.
    Symmetric in ``local`` and ``remote``, so caller and callee agree."""
    return not tcp_possible(local, remote, same_network) and not punch_possible(local, remote)


def stagger_overrides(local: Candidates, remote: Candidates,
                      same_network: bool) -> dict[str, float]:
    """Start delays to change from the defaults for this pair (attempt kind -> seconds)."""
    overrides: dict[str, float] = {}
    if not tcp_possible(local, remote, same_network):
        overrides["udp-punch"] = 0.0
    if direct_ruled_out(local, remote, same_network):
        overrides["relay"] = 0.0
    return overrides

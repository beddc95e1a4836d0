"""Which direct paths two sides' candidates leave possible, and so when each attempt of the
race starts (sans-IO: both sides' :class:`~overlay.media.signalling.Candidates` in, a
:class:`RacePlan` out).

This is the one place that says "no direct path can work between these two": both sides
compute it from the same invite and answer, so both start their relay halves at the same
moment. Today's rule is the connectivity matrix of ``tests/lab/test_connectivity_lab.py``:

- a direct TCP connection is known to work when one side accepts unsolicited connections
  (the supernode's dial-back reached it: ``reachable``, which only clients that may become
  supernodes check; or a router mapping of its listener), or both sides are on one network
  (one public address, or the whole overlay on one machine). It *may* work when a side's
  UDP socket is not translated (NAT class ``public``): a public host, or one behind a
  stateful firewall, which the NAT class does not tell apart;
- hole punching may work unless both sides are ``symmetric``, or one is ``symmetric`` and
  the other has no UDP (or an unknown class): UDP punching needs UDP on both sides and at
  most one symmetric side (:mod:`.birthday` against a symmetric one), TCP punching
  (:mod:`.tcp_punch`) needs no symmetric side (a symmetric NAT picks a random port per
  connection too).

The plan, on top of ``connect.DEFAULT_STAGGERS`` (UDP punching after 0.25 s, relays after
1.5 s): when no direct path is known to work, the relay starts at once; if a direct TCP path
still may work, the caller then waits up to :data:`PREFER_DIRECT_S` after a relay
authenticated for a direct path to authenticate too, and selects the direct one if it does.
UDP punching starts at once when no direct TCP path is known to work (its 0.25 s only gives a
TCP path the chance to win first). A path that only *may* work (a ``public`` side whose
dial-back failed: a host behind a stateful firewall, which drops the peer's SYN; or whose check
is not done yet, the first moment after it attached) gets no head start: its attempts run on
beside the punched path, and a file moves to one that completes (``from_udp``, below).

UDP first, upgrade to TCP (``udp_first``: a file whose caller opens its punched path with
0-RTT, :mod:`overlay.media.quic`, once the signalling showed a long round trip; or a direct
TCP path that only may work): where a direct TCP path may work (a side public or reachable)
but the sides are not on one network, UDP punching starts at once rather than after TCP's
head start, so the caller's first bytes ride its first QUIC flight; the direct TCP attempts
run on (``from_udp``), and the transfer moves to the first that completes, for TCP's
throughput (:func:`.techniques.file_moves_to`).

Relay first, upgrade later (``upgrade``: what runs on the path can move to a direct path
mid-way; the media service says so for files and calls): the direct attempts still running
when a relay is selected keep running (a file's for :data:`UPGRADE_WINDOW_S`), and the first
that completes takes over (:class:`~overlay.media.late_paths.LateDirect`). A birthday punch
(one symmetric side) takes 1 to 5 s, so for such a pair the relay then starts at once
instead of after it.
"""


from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from overlay.core.addresses import Address
from overlay.media import tcp_punch
from overlay.media.birthday import birthday_role
from overlay.media.candidate_policy import local_overlay, public_of
from overlay.media.punch import punch_feasible
from overlay.media.signalling import Candidates

#: the NAT class (``binding.classify``) of an untranslated UDP socket
PUBLIC = "public"
#: how long the caller waits, after a relay authenticated, for a direct path that may work
PREFER_DIRECT_S = 0.1
#: how long direct attempts keep running after a relay was selected, for a move to a direct
#: path: a birthday spray takes 4.1 s after its 0.25 s stagger (longer on a loaded machine)
UPGRADE_WINDOW_S = 10.0


def one_network(own_reflexive: Iterable[str], remote: Candidates) -> bool:
    """Both sides share a public address (one LAN), or the whole overlay runs on this
    machine: private candidates are dialled (:mod:`.candidate_policy`)."""
    own = tuple(own_reflexive)
    return local_overlay(own) or bool(public_of(own) & remote.public_hosts())


def accepts_tcp(side: Candidates) -> bool:
    """Others can open TCP connections to this side (dial-back succeeded, or a mapping)."""
    return side.reachable or bool(side.mapped_tcp)


def known_listener(remote: Candidates, addr: Address, own_reflexive: Iterable[str]) -> bool:
    """Whether the peer's TCP listener is known to be at ``addr`` (one of its candidates), so
    that a caller's dial there may go caller first (:mod:`.tcp_listener`): a router mapping
    of it, or the peer's public address when its socket is not translated (``public``) or the
    supernode's dial-back reached it; any, when the whole overlay runs on this machine. Not a
    guess (a NATed peer's public address with its listener's port): that may reach someone
    else's listener, which the caller would take for the callee's until its deadline."""
    if addr in remote.mapped_tcp or local_overlay(own_reflexive):
        return True
    return addr[0] in remote.public_hosts() and (remote.reachable or remote.nat == PUBLIC)


def tcp_known(local: Candidates, remote: Candidates, same_network: bool) -> bool:
    return same_network or accepts_tcp(local) or accepts_tcp(remote)


def tcp_maybe(local: Candidates, remote: Candidates, same_network: bool) -> bool:
    return tcp_known(local, remote, same_network) or PUBLIC in (local.nat, remote.nat)


def punch_possible(local: Candidates, remote: Candidates) -> bool:
    """Hole punching may work: a router mapping of a UDP socket; TCP punching (no symmetric
    side); simple UDP punching (UDP on both sides, no symmetric one); birthday punching (one
    symmetric side, the other ``cone`` or ``public``)."""
    if local.mapped_udp or remote.mapped_udp:
        return True
    return tcp_punch.nat_allows(local.nat, remote.nat) \
        or birthday_role(local.nat, remote.nat) is not None


def punch_needs_mapping(local: Candidates, remote: Candidates) -> bool:
    """Simple UDP punching gets through between these sides only by a router mapping of a
    side's UDP socket (two symmetric NATs, one of them mapped: :func:`.punch.punch_feasible`),
    so a punched path between them is the mapping's doing. Symmetric in the two sides."""
    return bool(local.mapped_udp or remote.mapped_udp) \
        and not punch_feasible(local.nat, remote.nat)


def direct_ruled_out(local: Candidates, remote: Candidates, same_network: bool) -> bool:
    """No direct path (TCP either way, UDP punching) can work between these two sides.
    Symmetric in ``local`` and ``remote``, so caller and callee agree."""
    return not tcp_maybe(local, remote, same_network) and not punch_possible(local, remote)


@dataclass(frozen=True)
class RacePlan:
    #: start delays to change from the defaults (attempt kind -> seconds)
    staggers: dict[str, float] = field(default_factory=dict)
    #: after a relay authenticated, how long the caller waits for a direct path
    prefer_direct_s: float = 0.0
    #: after a relay was selected, how long direct attempts may still take over (0: none)
    upgrade_s: float = 0.0
    #: UDP first, upgrade to TCP: after a direct UDP path was selected, the direct TCP
    #: attempts may still take over (for ``upgrade_s``)
    from_udp: bool = False


def plan(local: Candidates, remote: Candidates, same_network: bool,
         upgrade: bool = False, udp_first: bool = False) -> RacePlan:
    """When each kind of attempt starts for this pair, whether a late direct path is
    preferred to a relay, and (``upgrade``: the purpose can move paths) how long a direct path
    may take over from a selected relay, and (``udp_first``) from a selected UDP path."""
    staggers: dict[str, float] = {}
    prefer = 0.0
    maybe, known = tcp_maybe(local, remote, same_network), tcp_known(local, remote, same_network)
    # TCP's head start only where a direct TCP path is known to work: the rest punch at once
    # (a public side whose dial-back failed is a stateful firewall, which drops our SYN)
    from_udp = upgrade and not same_network and maybe and (udp_first or not known)
    if from_udp or not known:
        staggers["udp-punch"] = 0.0
    if not known and not punch_possible(local, remote):
        staggers["relay"] = 0.0
        if maybe:
            prefer = PREFER_DIRECT_S
    if upgrade and birthday_role(local.nat, remote.nat) is not None and not known:
        staggers["relay"] = 0.0  # data flows on the relay while the birthday punch runs
    return RacePlan(staggers, prefer, UPGRADE_WINDOW_S if upgrade else 0.0, from_udp)

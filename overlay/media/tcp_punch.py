"""TCP hole punching by simultaneous open: whether to try it, at which addresses, and when
(sans-IO: candidates in, a :class:`TcpPunchPlan` out).

Each side connects *from its media listener's port* to the peer's TCP candidates, while the
listener keeps listening (both sockets have ``SO_REUSEPORT``). A NAT that keeps the source
port maps that connection to the reflexive address we advertised (``reflexive_host``, listener
port), so each side's outgoing SYN opens its own NAT (or stateful firewall) for exactly the
4-tuple the peer's SYN arrives with. The first SYN to arrive at the other side's router is
dropped there (no entry yet; the lab's routers, like most, drop silently); the later one
matches the entry the other side's SYN created and reaches a socket in ``SYN_SENT`` with the
same 4-tuple (Linux hands a SYN to the connecting socket before any listener), and the two
kernels complete a simultaneous open. No timing is needed for that with routers that drop
silently, provided each side's socket is still connecting when the passing SYN arrives. The
callee punches as it sends its answer (:class:`overlay.media.tcp_punch_io.EarlyPunches`), the
caller as soon as it has the answer (it learns the candidates last): the callee's SYN leaves
first, one signalling leg ahead (DCUtR's sync aims both SYNs at the same instant; with silent
drops, ahead is as good), and the caller's SYN passes the callee's router into its connecting
socket, one direct RTT after the caller has the answer. A punch attempt lives
:data:`TCP_PUNCH_TIMEOUT_S` (SYN retransmits at 1 s and 3 s fall inside it).

When it is tried (:func:`plan`):

- not when either side is ``reachable`` (the supernode's dial-back worked): a plain dial
  (``tcp-dial``) reaches it;
- not when either side's NAT is ``symmetric``: such a NAT maps each connection to a new
  random port, so the peer's SYN never matches (the NAT class is measured on UDP; a NAT that
  randomises UDP ports is taken to randomise TCP ports too). A ``no-udp`` side (TCP only) is
  tried: nothing tells its TCP port behaviour, and a port-preserving one is what this is for;
- only at the peer's public-scope TCP candidates that are not router mappings (those are
  dialled plainly) nor our own public address (``own_public``: the peer is on our LAN): no NAT
  stands between us and a loopback or private address, and a plain dial reaches it;
- started at once when UDP hole punching is not tried (a ``no-udp`` side); else
  :data:`AFTER_UDP_PUNCH_S` later, as a fallback, so that where UDP punching works it stays
  the path it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from overlay.core.addresses import PUBLIC, Address, scope
from overlay.media.signalling import Candidates

#: how long one punch attempt waits for the connection (covers SYN retransmits at 1 s, 3 s)
TCP_PUNCH_TIMEOUT_S = 5.0
#: start delay of the punch when UDP hole punching is tried too (UDP starts at 0.25 s)
AFTER_UDP_PUNCH_S = 1.0


@dataclass(frozen=True)
class TcpPunchPlan:
    """The peer addresses to punch at (none: not tried, ``reason`` says why) and the start
    delay within the race."""

    targets: tuple[Address, ...]
    delay_s: float
    reason: str


def nat_allows(local_nat: str, remote_nat: str) -> bool:
    """Neither NAT is symmetric: a symmetric NAT picks a random port per connection, so the
    peer's SYN never matches the entry our punching connection made."""
    return "symmetric" not in (local_nat, remote_nat)


def plan(local: Candidates, remote: Candidates, own_public: Iterable[str],
         udp_punch_tried: bool) -> TcpPunchPlan:
    """Whether and where to punch: ``local`` are our candidates, ``remote`` the peer's as the
    candidate policy left them (only those we may dial), ``own_public`` our public reflexive
    address(es), ``udp_punch_tried`` whether the race punches UDP too."""
    if local.reachable or remote.reachable:
        return TcpPunchPlan((), 0.0, "a side accepts connections: a plain dial reaches it")
    if not nat_allows(local.nat, remote.nat):
        return TcpPunchPlan((), 0.0, "a symmetric NAT picks a random port per connection")
    ours = frozenset(own_public)
    mapped = frozenset(remote.mapped_tcp)
    targets = tuple(a for a in dict.fromkeys(remote.tcp)
                    if scope(a[0]) == PUBLIC and a not in mapped and a[0] not in ours)
    if not targets:
        return TcpPunchPlan((), 0.0, "no candidate to punch at")
    delay = AFTER_UDP_PUNCH_S if udp_punch_tried else 0.0
    return TcpPunchPlan(targets, delay, "neither side reachable, no symmetric NAT")

"""The paths the NAT lab's pairs of router kinds must take: one table for file transfers
(``overlay send``), and the calls' table derived from it (``overlay call``).

Rules (the issue's table, as data in :data:`FILE_PATHS`):

- either side ``public``: ``direct-tcp``;
- either side ``mapping``: ``direct-tcp`` (the other side dials the router-mapped address);
- both sides in {``firewalled``, ``cone``, ``cgnat``}: ``udp-punch`` (technique ``simple``);
- one ``symmetric`` side, the other in {``firewalled``, ``cone``, ``cgnat``}: ``udp-punch``
  (technique ``birthday``);
- a ``tcp-only`` side and the other in {``tcp-only``, ``firewalled``, ``cone``, ``cgnat``}:
  ``tcp-punch`` (simultaneous open; every one of those NATs keeps TCP ports);
- the rest: ``relay``: ``symmetric`` with ``symmetric`` (both ports random per destination:
  nothing to aim at) and ``symmetric`` with ``tcp-only`` (no UDP on one side, a random TCP
  port on the other).

Calls take the same paths (:data:`CALL_PATHS`), except that a relayed call goes through the
supernodes' datagram relay (UDP) where UDP gets out of both sides, and through the TCP relay
where one side is ``tcp-only`` (:func:`call_relay_carriage`). ``overlay call --json`` reports
both as path ``relay`` (with the relay's key); which one carried the call is the caller's
``call_ended`` log line's ``carried_as``: ``datagram`` (QUIC datagrams through the UDP relay)
or ``stream`` (the TCP relay's byte stream).
"""

from __future__ import annotations

from tests.helpers.lab_overlay import KINDS

D, P, T, R = "direct-tcp", "udp-punch", "tcp-punch", "relay"
#: (sender kind, receiver kind) -> path ``overlay send --json`` must report
FILE_PATHS: dict[tuple[str, str], str] = {
    # sender ↓  receiver →   public firewalled cone symmetric tcp-only cgnat mapping
    **dict(zip([("public", k) for k in KINDS],     [D, D, D, D, D, D, D], strict=True)),
    **dict(zip([("firewalled", k) for k in KINDS], [D, P, P, P, T, P, D], strict=True)),
    **dict(zip([("cone", k) for k in KINDS],       [D, P, P, P, T, P, D], strict=True)),
    **dict(zip([("symmetric", k) for k in KINDS],  [D, P, P, R, R, P, D], strict=True)),
    **dict(zip([("tcp-only", k) for k in KINDS],   [D, T, T, R, T, T, D], strict=True)),
    **dict(zip([("cgnat", k) for k in KINDS],      [D, P, P, P, T, P, D], strict=True)),
    **dict(zip([("mapping", k) for k in KINDS],    [D, D, D, D, D, D, D], strict=True)),
}

#: On impaired links the path race may legitimately go another way where both paths work: a
#: lost SYN costs direct TCP ~1 s (the initial RTO), so a punched UDP path to a public peer
#: wins; and punching plus the QUIC and end-to-end handshakes take ~3 s at 400 ms RTT with
#: loss, so the relay (started at 1.5 s) sometimes completes first, or TCP punching (started
#: 1 s after UDP punching as its fallback) does; a punched TCP path whose SYN was lost waits
#: ~1 s for the retransmission, and the relay may win meanwhile. With a public caller the
#: callee's TCP punch (from its listener's port at the caller's listener) meets the caller's
#: own punch as a simultaneous open and completes while both sides' dials wait out a lost
#: SYN: a direct TCP path all the same, reported ``tcp-punch``. Since the invite carries the
#: caller's path salt, a relay authenticates as soon as the callee's side is up, no later
#: than the connection the callee dials to a public caller: when that connection's SYN is
#: lost, the relay (started at once for a ``tcp-only`` side) wins (``public->tcp-only``, 1 of
#: 25 pairs in one CI run). The impaired file matrix is
#: about delivery: it accepts these alternatives and marks them in its table; impaired calls
#: accept them too, each judged by the path it took. Unimpaired runs do not accept them.
ALSO_ACCEPTED_IMPAIRED: dict[str, set[str]] = {D: {P, T, R}, P: {R, T}, T: {R}}

#: the path ``overlay call --json`` reports for a relayed call, through the datagram relay
#: (UDP) or the TCP relay alike: ``relay``
CALL_RELAY_PATH = R
#: paths that go through a relay (the rest are direct: the call thresholds differ)
RELAYED_PATHS = frozenset({R, CALL_RELAY_PATH})
#: how a relayed call's frames are carried (the caller's ``call_ended`` log: ``carried_as``):
#: as QUIC datagrams through a supernode's datagram relay (the lab's supernodes run one,
#: :data:`tests.helpers.lab_overlay.RELAY_UDP_PORT`), or on the TCP relay's stream
UDP_RELAY, TCP_RELAY = "datagram", "stream"


def call_relay_carriage(caller: str, callee: str) -> str:
    """How a call between these kinds is carried when it is relayed: through the datagram
    relay where UDP gets out of both sides (a call prefers it), else through the TCP relay."""
    return TCP_RELAY if "tcp-only" in (caller, callee) else UDP_RELAY


def call_path(caller: str, callee: str) -> str:
    """The path ``overlay call --json`` must report (its final line) for a call between these
    kinds: where a UDP attempt runs, a call moves off direct TCP to the punched UDP path
    that completes later, or starts on it (:func:`overlay.media.techniques.call_moves_to`,
    :data:`overlay.media.path_opening.CALL_PREFER_UDP_S`). A UDP attempt runs wherever UDP
    gets out of both sides, except between two ``symmetric`` ones: a ``mapping`` side's
    router-mapped UDP port takes the other side's probes whatever port its NAT picks
    (:func:`overlay.media.punch.punch_feasible`)."""
    path = FILE_PATHS[(caller, callee)]
    if "tcp-only" in (caller, callee):
        return path
    return {R: CALL_RELAY_PATH, D: P}.get(path, path)


#: (caller kind, callee kind) -> path ``overlay call --json`` must report
CALL_PATHS: dict[tuple[str, str], str] = {pair: call_path(*pair) for pair in FILE_PATHS}

"""How a raced path got through, as ``overlay send --json`` reports it next to ``path``: from
the name of the attempt that was selected (:mod:`overlay.media.connect`) and how an inbound
TCP connection reached us.
"""

from __future__ import annotations


def is_relay(name: str) -> bool:
    """Whether the attempt called ``name`` goes through a supernode's relay."""
    return name.startswith("relay")


def is_direct_udp(name: str) -> bool:
    """Whether the attempt called ``name`` is a direct UDP path (QUIC on a punched socket)."""
    return name in ("udp-punch", "udp-birthday")


def is_stream_carried(name: str) -> bool:
    """Whether a call on the path of attempt ``name`` goes on a TCP stream (direct TCP, TCP
    punching, the TCP relay) rather than as QUIC datagrams (direct UDP, the datagram relay):
    such a call mirrors its frames on a relay path (:mod:`overlay.call.stream_io`)."""
    return not (is_direct_udp(name) or name.startswith("relay-udp"))


def file_moves_to(current: str, new: str) -> bool:
    """Whether a file transfer on the path of attempt ``current`` moves to the path of attempt
    ``new`` that completed after the race: off a relay to any direct path (it costs the
    network nothing), and off a direct UDP path to a direct TCP one (QUIC in Python carries
    about 40 Mbit/s, a TCP connection what the link carries). Never to a relay, nor from one
    direct path of a kind to another of the same kind."""
    if is_relay(new):
        return False
    return is_relay(current) or (is_direct_udp(current) and not is_direct_udp(new))


def call_moves_to(current: str, new: str) -> bool:
    """Whether a call on the path of attempt ``current`` moves to the path of attempt ``new``
    that completed after the race (else ``new`` is a spare, SELECTed if the path in use
    fails): off a relay to any direct path (as a file does), and off a direct TCP path to a
    direct UDP one (on TCP, one lost segment holds every later frame back). A relay is never
    moved to while the path in use works."""
    if is_relay(new) or is_direct_udp(current):
        return False
    return is_relay(current) or is_direct_udp(new)


def relay_index(name: str) -> int | None:
    """Which relay of the invite the relay attempt ``name`` goes through (its TCP relay,
    ``relay-N``, and its datagram relay, ``relay-udp-N``, are the same supernode)."""
    if not is_relay(name):
        return None
    last = name.rpartition("-")[2]
    return int(last) if last.isdigit() else None


def relay_elsewhere(name: str, current: str) -> bool:
    """Whether attempt ``name`` is a relay path at another supernode than the path of attempt
    ``current`` (any relay when that is a direct path): the one kind of relay path that is a
    spare for a session on ``current``, since it does not die with ``current``'s supernode."""
    index = relay_index(name)
    return index is not None and index != relay_index(current)


def technique(selected: str | None, inbound_via_mapping: bool,
              inbound_on_lan: bool = False, punch_via_mapping: bool = False) -> str:
    """How the path of the ``selected`` attempt got through, as ``overlay send --json``
    reports it (next to ``path``):

    - ``lan``: we dialled the peer's address on the LAN both share (``tcp-dial-lan-N``), or
      the peer's connection reached our listener from such an address (``inbound_on_lan``);
    - ``mapping``: we dialled the peer's router-mapped address, or the peer's connection
      reached our listener through our own mapping (``inbound_via_mapping``), or a UDP punch
      that only a router mapping of a side's UDP socket lets through (``punch_via_mapping``:
      :func:`.direct_paths.punch_needs_mapping`);
    - ``dial``: any other direct TCP connection (one side reachable, the other dialled);
    - ``simple``: UDP hole punching, both sides probing each other's candidates;
    - ``simultaneous-open``: TCP hole punching, both sides connecting from their listener's
      port at the same time (:mod:`overlay.media.tcp_punch`);
    - ``birthday``: UDP hole punching with one symmetric side: its extra sockets against the
      other side's random-port probes (:mod:`overlay.media.birthday`);
    - ``relay``: through a supernode's relay;
    - ``unknown``: nothing was selected.
    """
    if selected is None:
        return "unknown"
    if is_relay(selected):
        return "relay"
    if selected.startswith("tcp-dial-lan") or (selected == "tcp-accept" and inbound_on_lan):
        return "lan"
    if selected == "udp-punch":
        return "mapping" if punch_via_mapping else "simple"
    if selected.startswith("tcp-punch"):
        return "simultaneous-open"
    if selected == "udp-birthday":
        return "birthday"
    if selected.startswith("tcp-dial-mapped") or (selected == "tcp-accept"
                                                  and inbound_via_mapping):
        return "mapping"
    return "dial"

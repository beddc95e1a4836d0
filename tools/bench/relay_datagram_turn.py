"""The datagram relay benchmark's coturn side with the bench's own generator: N calls set up
by :mod:`tools.bench.turn_client` (two UDP allocations per call, each ChannelBound to the
other's relayed address), then :mod:`tools.bench.datagram_load` sends the same 160-byte
datagrams as for the overlay relay, as ChannelData to the TURN server.

A TURN call between two clients of one server takes two relay hops inside it (client A ->
A's relayed address -> B's relayed address -> client B): that is how TURN relays a call
whose two ends both allocated there (``turnutils_uclient -y`` does the same).
"""

from __future__ import annotations

import contextlib
import socket

from tools.bench import turn_client as tc
from tools.bench import turn_wire as tw
from tools.bench.datagram_load import Call, Leg
from tools.bench.relay_common import FRAME
from tools.bench.relay_coturn import TURN_PASS, TURN_PORT, TURN_USER

CHANNEL = tw.FIRST_CHANNEL
#: every datagram a leg sends: ChannelData on CHANNEL, FRAME bytes
HEADER = tw.CHANNEL_HEADER.pack(CHANNEL, FRAME)


def _socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
    sock.bind((host, 0))
    return sock


def turn_calls(server_host: str, n: int, callers: str, callees: str
               ) -> tuple[list[Call], list[tc.Allocation]]:
    """N calls through the TURN server: allocations, channel bindings, the legs."""
    server = (server_host, TURN_PORT)
    calls: list[Call] = []
    allocs: list[tc.Allocation] = []
    try:
        for i in range(n):
            a = tc.allocate(_socket(f"{callers}.{1 + i % 250}"), server, TURN_USER, TURN_PASS)
            allocs.append(a)
            b = tc.allocate(_socket(f"{callees}.{1 + i % 250}"), server, TURN_USER, TURN_PASS)
            allocs.append(b)
            tc.channel_bind(a, CHANNEL, b.relayed)
            tc.channel_bind(b, CHANNEL, a.relayed)
            calls.append((Leg(a.sock, server, HEADER, b.sock.getsockname()),
                          Leg(b.sock, server, HEADER, a.sock.getsockname())))
    except BaseException:
        close_calls(allocs)
        raise
    return calls, allocs


def close_calls(allocs: list[tc.Allocation]) -> None:
    """Release every allocation (Refresh, LIFETIME 0) and close its socket."""
    for alloc in allocs:
        with contextlib.suppress(tc.TurnError, OSError, tw.TurnWireError):
            alloc.sock.setblocking(True)
            tc.release(alloc)
        alloc.sock.close()

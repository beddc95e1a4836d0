"""A caller who claims a symmetric NAT makes the callee spray probes at random ports of the
address it names as its own: birthday punching must not make the callee a port scanner.

The attacker signs an invite as itself (nothing more is needed: the callee starts punching as
soon as it answered), claims NAT type ``symmetric`` and names a victim (127.0.0.3, standing
for any host) as its reflexive candidate. The callee (cone) runs the attempt its service
builds for that invite (:func:`overlay.media.transport_hooks.udp_attempt`). A packet socket on
``lo`` sees every datagram the callee's media socket sends: per session, at most
1,024 probes go to random ports, all of them to that one
host, paced (never more than a batch per interval), and none after the attempt's deadline.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from overlay.media import transport_hooks
from overlay.media.birthday import BIRTHDAY_TIMEOUT_S
from overlay.media.media_socket import MediaSocket
from overlay.media.punch import FAST_INTERVAL_S, FAST_PERIOD_S, SLOW_INTERVAL_S, PunchFailed
from overlay.media.signalling import Candidates

if os.geteuid() != 0:
    pytest.skip("a packet socket on lo needs root", allow_module_level=True)

VICTIM = "127.0.0.3"
#: the documented bounds (docs/ARCHITECTURE.md), as numbers: a change of the constants in
#: overlay/media/birthday.py must not pass unnoticed
EASY_PROBES = 1024
#: 250 probes/s: 5 every 20 ms, so at most 6 batches in any 100 ms, plus a simple round
MOST_PER_100_MS = 6 * 5 + 2
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33  # linux/socket.h; not exported by the socket module


@contextmanager
def sniff_udp_from(port: int) -> Iterator[list[tuple[float, str, int]]]:
    """(time, destination host, destination port) of every UDP datagram sent from ``port``
    on lo while the block runs (read by the event loop)."""
    seen: list[tuple[float, str, int]] = []
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 23)  # lose no burst
    sock.bind(("lo", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        while True:
            try:
                frame, addr = sock.recvfrom(2048)
            except BlockingIOError:
                return
            if addr[2] != PACKET_OUTGOING or len(frame) < 14 + 28:
                continue
            ip = frame[14:]
            if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
            if sport == port:
                seen.append((time.monotonic(), socket.inet_ntoa(ip[16:20]), dport))

    loop.add_reader(sock.fileno(), readable)
    try:
        yield seen
    finally:
        readable()
        loop.remove_reader(sock.fileno())
        sock.close()


async def test_a_claimed_symmetric_nat_gets_one_paced_bounded_spray_at_one_host() -> None:
    media = await MediaSocket.open("127.0.0.1", 0)
    attacker = await MediaSocket.open("127.0.0.1", 0)  # answers nothing
    try:
        local = Candidates(udp=(media.local_address,), nat="cone")
        invite = Candidates(udp=(attacker.local_address, (VICTIM, 9)), nat="symmetric")
        found = transport_hooks.udp_attempt(transport_hooks.UdpState(media), os.urandom(16),
                                            False, local, invite, os.urandom(32),
                                            os.urandom(32))
        assert found is not None and found[0] == "udp-birthday"
        with sniff_udp_from(media.local_address[1]) as seen:
            started = time.monotonic()
            with pytest.raises(PunchFailed):
                await found[1]()
            ended = time.monotonic()
        assert ended - started <= BIRTHDAY_TIMEOUT_S + 0.5
        # simple punching's rounds to each named candidate, and the spray
        rounds = (FAST_PERIOD_S / FAST_INTERVAL_S
                  + (BIRTHDAY_TIMEOUT_S - FAST_PERIOD_S) / SLOW_INTERVAL_S + 1)
        assert {host for _, host, _ in seen} <= {"127.0.0.1", VICTIM}
        at_victim = [(t, port) for t, host, port in seen if host == VICTIM]
        sprayed = [(t, port) for t, port in at_victim if port != 9]
        assert len(sprayed) >= EASY_PROBES * 0.9, len(sprayed)  # the spray did run
        assert len(at_victim) <= EASY_PROBES + rounds, len(at_victim)
        assert len({port for _, port in sprayed}) == len(sprayed)  # each port once
        # paced: in any 100 ms, at most the batches due in it (plus a simple round)
        times = [t for t, _ in at_victim]
        for i, t in enumerate(times):
            in_window = sum(1 for u in times[i:i + MOST_PER_100_MS + 1] if u - t < 0.1)
            assert in_window <= MOST_PER_100_MS, (in_window, t - started)
        assert times[-1] <= ended
    finally:
        await attacker.close()
        await media.close()

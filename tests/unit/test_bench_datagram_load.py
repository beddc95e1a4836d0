"""The datagram relay benchmark's generator (tools/bench/datagram_load.py) on loopback: what
it offers, sends and receives, and the delays it measures."""

from __future__ import annotations

import socket

from tools.bench.datagram_load import Leg, payload_offset, run_load
from tools.bench.relay_common import FRAME


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_two_calls_straight_to_the_peer_deliver_what_was_offered() -> None:
    socks = [_udp() for _ in range(4)]
    try:
        addr = [s.getsockname() for s in socks]
        calls = [(Leg(socks[0], addr[1], b"", addr[1]), Leg(socks[1], addr[0], b"", addr[0])),
                 (Leg(socks[2], addr[3], b"", addr[3]), Leg(socks[3], addr[2], b"", addr[2]))]
        started = []
        result = run_load(calls, 0.02, 0.5, relayed=True, procs=2,
                          on_start=lambda: started.append(1))
        assert started == [1] and result.workers == 2
        assert result.offered == 4 * 25  # 4 legs, one datagram per 20 ms for 0.5 s
        assert result.sent == result.offered
        assert result.received == result.sent == len(result.delays_ns)
        assert all(0 < d < 1_000_000_000 for d in result.delays_ns)
    finally:
        for s in socks:
            s.close()


def test_payload_offset_tells_stamped_datagrams_from_control() -> None:
    assert payload_offset(bytes(FRAME)) == 0
    assert payload_offset(b"\x40\x00\x00\xa0" + bytes(FRAME)) == 4  # ChannelData
    assert payload_offset(b"\x01\x01\x00\xa0" + bytes(FRAME)) is None  # STUN, not ChannelData
    assert payload_offset(b"OVRD" + bytes(10)) is None

"""The C fast path's lease table (overlay/relay/_forwarder.c) through many puts and takes:
it grows, forgets what was taken, keeps one lease per address, and still finds each live
lease (IPv4 and IPv6 addresses). ``python -m tools.fuzz --only relay_fast_path`` drives its
socket side; this, its table."""

from __future__ import annotations

import random
import time

import pytest

from tests.helpers.netutil import udp_socket

forwarder_module = pytest.importorskip("overlay.relay._forwarder")


def test_many_leases_come_and_go_and_each_live_one_is_found() -> None:
    relay, a, b = (udp_socket() for _ in range(3))
    try:
        to_core: list[tuple[str, int]] = []
        fw = forwarder_module.Forwarder(relay.fileno(), lambda d, addr: to_core.append(addr),
                                        b"OVRD", 1400, 10.0, 3)
        rng = random.Random(7)
        now = time.monotonic()
        live: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {}
        for _ in range(30):
            for _ in range(rng.randrange(1, 300)):
                x = (f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                     rng.randrange(1, 65536))
                y = (f"2001:db8::{rng.randrange(65536):x}", rng.randrange(1, 65536))
                if any(x in pair or y in pair for pair in live.values()):
                    with pytest.raises(ValueError):
                        fw.put(x, y, now, now, 1000, 1000, 1000)
                    continue
                live[fw.put(x, y, now, now, 1000, 1000, 1000)] = (x, y)
            for handle in rng.sample(sorted(live), k=len(live) // 2):
                assert fw.take(handle)[6:8] == (0, 0)
                del live[handle]
            assert fw.leases == len(live)
        # one more, on real sockets, among them: found and forwarded
        handle = fw.put(a.getsockname(), b.getsockname(), now, now, 10_000, 10_000, 10_000)
        a.sendto(b"hello", relay.getsockname())
        deadline = time.monotonic() + 5
        got = b""
        while not got and time.monotonic() < deadline:
            fw.on_readable()
            try:
                got = b.recv(100)
            except BlockingIOError:
                time.sleep(0.001)
        assert got == b"hello" and to_core == []
        assert fw.take(handle)[6:8] == (1, 5)
        for handle in live:  # the rest are still there
            fw.take(handle)
        assert fw.leases == 0
        with pytest.raises(ValueError):
            fw.put(("not an address", 1), ("198.18.0.1", 1), now, now, 1, 1, 1)
    finally:
        for s in (relay, a, b):
            s.close()

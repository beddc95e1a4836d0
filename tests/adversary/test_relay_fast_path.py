"""The datagram relay's C fast path (overlay.relay._forwarder) forwards nothing the core would
not: an attacker who holds one end of a relayed call, or none, gets no more through it.

Real UDP sockets on loopback and a real relay endpoint (overlay.relay.datagram_io); the
attacker has raw datagrams from the addresses it holds and the wire format of
docs/ARCHITECTURE.md ("Calls").

1. A bound end flooding beyond its session's rate gets the rate through (plus the buckets'
   depth and the start credit), with the fast path as without it; the fast path carried it.
2. An end that moves (ALLOCATE from a new address) takes the session with it: its old address
   gets nothing more, though the fast path had a lease for it.
3. After a hang-up (RELEASE) nothing is forwarded, though the fast path had a lease.
4. The lease's own rules, on the fast path alone: nothing to an end not heard within the
   consent time, nothing beyond the anti-amplification room or the credit, nothing from a
   third address, no control message and no oversized datagram: all go to the core.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from overlay.core.identity import Identity
from overlay.node.metrics import datagram_relay_metrics
from overlay.relay.admission import RelayAdmission
from overlay.relay.budget import Budget, BudgetConfig
from overlay.relay.datagram import (
    AMPLIFICATION,
    CONSENT_S,
    MAGIC,
    MAX_DATAGRAM_BYTES,
    START_CREDIT_BYTES,
    DatagramRelay,
)
from overlay.relay.datagram_io import DatagramRelayEndpoint, start_datagram_relay
from tests.adversary.test_relay_datagram_abuse import RELAY_KEY, allocate, hello
from tests.helpers.netutil import loopback_ips, udp_socket, wait_for

forwarder_module = pytest.importorskip("overlay.relay._forwarder")

MBIT = 1_000_000
RATE_BPS = 64_000
KEEPALIVE = b"OVRD\x01\x03"
STATUS_OK = b"OVRD\x01\x02\x00"


def voucher(token: bytes, caller: Identity, callee: Identity) -> bytes:
    from overlay.relay.voucher import Voucher, statement_for
    st = statement_for(RELAY_KEY, token, int(time.time()) + 300, caller.public_key,
                       callee.public_key)
    return Voucher(st, st.sign(caller), st.sign(callee)).to_bytes()


async def recv(s: socket.socket, timeout_s: float = 2.0) -> bytes:
    data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(s, 4096),
                                     timeout_s)
    return data


async def drain(s: socket.socket, quiet_s: float = 0.3) -> int:
    """Bytes that arrive at ``s`` until it has been quiet for ``quiet_s``."""
    total = 0
    while True:
        try:
            total += len(await recv(s, quiet_s))
        except TimeoutError:
            return total


async def bind(s: socket.socket, relay: tuple[str, int], body: bytes) -> None:
    s.sendto(allocate(bytes(16), body), relay)
    challenge = await recv(s)
    assert challenge[:6] == b"OVRD\x01\x01"
    s.sendto(allocate(challenge[6:], body), relay)


async def pair(relay: tuple[str, int], caller: socket.socket, callee: socket.socket,
               token: bytes) -> None:
    await bind(caller, relay, hello(0, token, voucher(token, Identity.generate(),
                                                      Identity.generate()), RATE_BPS))
    await asyncio.sleep(0)
    await bind(callee, relay, hello(1, token))
    for s in (caller, callee):
        status = await recv(s)
        assert status[:7] == STATUS_OK, status


@pytest.fixture(params=[True, False], ids=["fast-path", "core-only"])
async def endpoint(request: pytest.FixtureRequest) -> AsyncIterator[DatagramRelayEndpoint]:
    config = BudgetConfig(total_bps=10 * MBIT)
    relay = DatagramRelay(config, Budget(config, time.monotonic()), RelayAdmission(config),
                          node_key=RELAY_KEY)
    ep = await start_datagram_relay(relay, loopback_ips(1)[0], 0, fast_path=request.param)
    assert ep.fast_path is request.param
    try:
        yield ep
    finally:
        ep.close()


def lent_now(ep: DatagramRelayEndpoint) -> float:
    (gauge,) = [m for m in datagram_relay_metrics(ep.relay)
                if m.name == "overlay_relay_call_fast_path_sessions"]
    return float(gauge.samples[0].value)


def fast_forwarded(ep: DatagramRelayEndpoint) -> int:
    fast = ep.relay.fast_path
    return 0 if fast is None else int(fast.forwarded)  # type: ignore[attr-defined]


async def test_a_flood_gets_its_rate_through_and_no_more(endpoint: DatagramRelayEndpoint
                                                         ) -> None:
    ip_a, ip_b = loopback_ips(2)
    a, b = udp_socket(ip_a), udp_socket(ip_b)
    try:
        await pair(endpoint.address, a, b, os.urandom(32))
        receiving = asyncio.ensure_future(drain(b, 0.5))
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 2.0:  # ~8 Mbit/s against a 64 kbit/s session
            for _ in range(10):
                a.sendto(b"z" * 1000, endpoint.address)
                sent += 1000
            b.sendto(b"y" * 200, endpoint.address)  # the callee keeps its consent and room
            await asyncio.sleep(0.001)
        got = await receiving
        elapsed = time.monotonic() - start
    finally:
        a.close()
        b.close()
    rate = RATE_BPS / 8
    assert sent > 20 * (rate * elapsed)
    # the rate over the flood, the bucket's depth (twice: a lease's return), the start credit
    assert got <= rate * elapsed + 2 * 4096 + START_CREDIT_BYTES + 1000, (got, elapsed)
    assert got >= rate * 1.0, got  # and the call itself still goes through
    assert endpoint.relay.stats.dropped["budget"] > 0
    if endpoint.fast_path:
        assert fast_forwarded(endpoint) > 0


async def talking(relay: tuple[str, int], caller: socket.socket, callee: socket.socket,
                  token: bytes) -> None:
    """Paired, and a datagram each way (the second on the fast path, under a lease, when
    there is one)."""
    await pair(relay, caller, callee, token)
    callee.sendto(b"hi", relay)
    assert await recv(caller) == b"hi"
    caller.sendto(b"hello", relay)
    assert await recv(callee) == b"hello"


async def test_an_end_that_moves_takes_the_session_with_it(endpoint: DatagramRelayEndpoint
                                                           ) -> None:
    ip_a, ip_b = loopback_ips(2)
    a, b, b2 = udp_socket(ip_a), udp_socket(ip_b), udp_socket(ip_b)
    token = os.urandom(32)
    try:
        await talking(endpoint.address, a, b, token)
        await bind(b2, endpoint.address, hello(1, token))  # the callee moves to b2
        assert (await recv(b2))[:7] == STATUS_OK
        for i in range(20):
            a.sendto(b"after %d" % i, endpoint.address)
        assert await drain(b, 0.3) == 0  # the old address: nothing
        assert await drain(b2, 0.3) == sum(len(b"after %d" % i) for i in range(20))
        b2.sendto(b"hi from b2", endpoint.address)
        assert await recv(a) == b"hi from b2"
    finally:
        for s in (a, b, b2):
            s.close()
    if endpoint.fast_path:
        assert fast_forwarded(endpoint) > 0


async def test_nothing_is_forwarded_after_a_hang_up(endpoint: DatagramRelayEndpoint) -> None:
    ip_a, ip_b = loopback_ips(2)
    a, b = udp_socket(ip_a), udp_socket(ip_b)
    token = os.urandom(32)
    try:
        await talking(endpoint.address, a, b, token)
        assert lent_now(endpoint) == (1 if endpoint.fast_path else 0)  # (as /metrics says)
        b.sendto(b"OVRD\x01\x04" + token, endpoint.address)  # RELEASE
        await wait_for(lambda: not endpoint.relay.sessions, 2.0)
        for _ in range(20):
            a.sendto(b"still there?", endpoint.address)
        assert await drain(b, 0.3) == 0
    finally:
        a.close()
        b.close()
    assert endpoint.relay.sessions == {}
    assert endpoint.relay.stats.ended["released"] == 1


# -- the lease's rules, on the fast path alone ------------------------------------------------


class Lab:
    """A Forwarder on a real socket, two ends and a third address; what it gives the core."""

    def __init__(self) -> None:
        ip_r, ip_a, ip_b, ip_c = loopback_ips(4)
        self.relay = udp_socket(ip_r)
        self.a, self.b, self.c = udp_socket(ip_a), udp_socket(ip_b), udp_socket(ip_c)
        self.to_core: list[tuple[bytes, tuple[str, int]]] = []
        self.forwarder = forwarder_module.Forwarder(
            self.relay.fileno(), lambda d, addr: self.to_core.append((d, addr)), MAGIC,
            MAX_DATAGRAM_BYTES, CONSENT_S, AMPLIFICATION)

    def addr(self, s: socket.socket) -> tuple[str, int]:
        host, port = s.getsockname()[:2]
        return str(host), int(port)

    def lease(self, *, heard_b_ago: float = 0.0, room_b: int = 10_000,
              credit: int = 10_000) -> int:
        now = time.monotonic()
        return int(self.forwarder.put(self.addr(self.a), self.addr(self.b), now,
                                      now - heard_b_ago, 10_000, room_b, credit))

    async def send(self, s: socket.socket, data: bytes) -> None:
        s.sendto(data, self.addr(self.relay))
        await asyncio.sleep(0.02)
        self.forwarder.on_readable()

    def close(self) -> None:
        for s in (self.relay, self.a, self.b, self.c):
            s.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    yield lab
    lab.close()


async def test_nothing_goes_to_an_end_not_heard_within_the_consent_time(lab: Lab) -> None:
    handle = lab.lease(heard_b_ago=CONSENT_S + 1)
    await lab.send(lab.a, b"x" * 100)
    assert await drain(lab.b, 0.1) == 0
    assert [d for d, _ in lab.to_core] == [b"x" * 100]  # the core decides (and drops it)
    assert lab.forwarder.take(handle)[6] == 0  # nothing forwarded


async def test_nothing_beyond_the_amplification_room(lab: Lab) -> None:
    lab.lease(room_b=250)
    await lab.send(lab.a, b"x" * 200)
    await lab.send(lab.a, b"y" * 200)  # 400 > 250: to the core
    assert await drain(lab.b, 0.1) == 200
    assert [d for d, _ in lab.to_core] == [b"y" * 200]
    await lab.send(lab.b, b"z" * 100)  # b sends: its room grows by AMPLIFICATION x 100
    assert await drain(lab.a, 0.1) == 100
    await lab.send(lab.a, b"w" * 300)  # 50 + 300 left: forwarded
    assert await drain(lab.b, 0.1) == 300


async def test_nothing_beyond_the_credit(lab: Lab) -> None:
    handle = lab.lease(credit=500)
    for _ in range(3):
        await lab.send(lab.a, b"x" * 200)
    assert await drain(lab.b, 0.1) == 400
    assert len(lab.to_core) == 1
    use = lab.forwarder.take(handle)
    assert use[6:8] == (2, 400) and use[9] == 100  # datagrams, bytes; credit left
    assert use[0] == 400 and use[4] == 400  # received from a, sent to b


async def test_third_addresses_control_messages_and_big_datagrams_go_to_the_core(lab: Lab
                                                                                 ) -> None:
    lab.lease()
    await lab.send(lab.c, b"from a third address")
    await lab.send(lab.a, KEEPALIVE)
    await lab.send(lab.a, b"q" * (MAX_DATAGRAM_BYTES + 1))
    assert await drain(lab.b, 0.1) == 0
    assert [len(d) for d, _ in lab.to_core] == [20, 6, MAX_DATAGRAM_BYTES + 1]
    assert lab.to_core[0][1] == lab.addr(lab.c)


async def test_a_taken_lease_forwards_nothing_more(lab: Lab) -> None:
    handle = lab.lease()
    await lab.send(lab.a, b"one")
    assert await drain(lab.b, 0.1) == 3
    lab.forwarder.take(handle)
    await lab.send(lab.a, b"two")
    assert await drain(lab.b, 0.1) == 0
    assert [d for d, _ in lab.to_core] == [b"two"]
    with pytest.raises(KeyError):
        lab.forwarder.take(handle)
    with pytest.raises(ValueError):  # one address, one lease
        lab.lease()
        lab.lease()

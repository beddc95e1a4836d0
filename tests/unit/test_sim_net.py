"""tools/sim's world model and in-memory transports: delivery after the world's latency,
seeded loss, reliable ordered streams."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tools.sim import vloop
from tools.sim.net import SimNet
from tools.sim.world import MAX_RTT_MS, MIN_RTT_MS, World


def make_net(seed: int = 1, loss: float = 0.0) -> SimNet:
    loop = vloop.VirtualTimeLoop()
    net = SimNet(loop, World(seed, loss))
    net.install()
    return net


class Inbox(asyncio.DatagramProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.got: list[tuple[bytes, tuple[str, int], float]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((data, addr, self.loop.time()))


def run(net: SimNet, coro: Any) -> Any:
    loop = net.loop
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_world_round_trips_are_symmetric_bounded_and_seeded() -> None:
    def rtts(seed: int) -> list[float]:
        world = World(seed)
        places = [world.place() for _ in range(200)]
        return [world.rtt_s(places[i], i, places[j], j) for i in range(200) for j in range(i)]

    first = rtts(5)
    assert first == rtts(5)
    assert first != rtts(6)
    assert all(MIN_RTT_MS / 1000 <= r <= MAX_RTT_MS / 1000 for r in first)
    assert max(first) > 0.2 and min(first) < 0.05  # intercontinental and local pairs both
    world = World(5)
    a, b = world.place("europe"), world.place("oceania")
    assert world.rtt_s(a, 0, b, 1) == world.rtt_s(b, 1, a, 0)


def test_a_datagram_arrives_after_the_one_way_delay_from_its_sender() -> None:
    net = make_net()
    alice, bob = net.add_host(), net.add_host()

    async def main() -> tuple[Inbox, float]:
        loop = net.loop
        _, inbox = await loop.create_datagram_endpoint(lambda: Inbox(loop),
                                                       local_addr=(bob.ip, 9000))
        tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    local_addr=(alice.ip, 0))
        await asyncio.sleep(5)
        tx.sendto(b"hello", (bob.ip, 9000))
        tx.sendto(b"nobody listens here", (bob.ip, 9001))
        await asyncio.sleep(5)
        return inbox, tx.get_extra_info("sockname")[1]

    inbox, port = run(net, main())
    assert inbox.got == [(b"hello", (alice.ip, port), 5 + net.one_way_s(alice, bob))]
    assert net.datagrams_undeliverable == 1
    assert alice.sent_datagrams == 2 and bob.sent_datagrams == 0


def received_with_loss(seed: int) -> list[int]:
    net = make_net(seed, loss=0.1)
    a, b = net.add_host(), net.add_host()

    async def main() -> list[int]:
        loop = net.loop
        _, inbox = await loop.create_datagram_endpoint(lambda: Inbox(loop),
                                                       local_addr=(b.ip, 9000))
        tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    local_addr=(a.ip, 9000))
        for i in range(2000):
            tx.sendto(i.to_bytes(2, "big"), (b.ip, 9000))
            await asyncio.sleep(0.001)
        await asyncio.sleep(1)
        return [int.from_bytes(d, "big") for d, _, _ in inbox.got]

    result: list[int] = run(net, main())
    return result


def test_loss_is_seeded_and_near_the_configured_rate() -> None:
    first = received_with_loss(3)
    assert first == received_with_loss(3)
    assert first != received_with_loss(4)
    assert 0.07 < 1 - len(first) / 2000 < 0.13
    assert first == sorted(first)  # one pair's datagrams keep their order


def test_streams_carry_bytes_in_order_with_latency_and_close_reaches_the_peer() -> None:
    net = make_net(loss=0.5)  # streams are reliable whatever the datagram loss
    server_host, client_host = net.add_host("europe"), net.add_host("asia")
    one_way = net.one_way_s(client_host, server_host)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data.upper())
        writer.close()

    async def main() -> tuple[bytes, float, float, tuple[str, int]]:
        loop = net.loop
        server = await net.spawn(server_host, asyncio.start_server(echo, "0.0.0.0", 7000))

        async def client() -> tuple[bytes, float, float, tuple[str, int]]:
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(server_host.ip, 7001)
            t0 = loop.time()
            reader, writer = await asyncio.open_connection(server_host.ip, 7000)
            connected = loop.time() - t0
            for part in (b"a", b"b", b"c" * 50):
                writer.write(part)
            writer.write_eof()
            got = await reader.read()
            writer.close()
            return got, connected, loop.time() - t0, writer.get_extra_info("peername")

        result = await net.spawn(client_host, client())
        server.close()
        return result

    got, connected, total, peer = run(net, main())
    assert got == b"ABCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"
    assert connected == pytest.approx(2 * one_way)
    assert total == pytest.approx(4 * one_way)  # connect, then data there and back
    assert peer == (server_host.ip, 7000)


def test_connecting_to_a_failed_host_times_out() -> None:
    net = make_net()
    a, b = net.add_host(), net.add_host()
    net.fail(b)

    async def main() -> float:
        with pytest.raises(TimeoutError):
            await net.spawn(a, asyncio.open_connection(b.ip, 7000))
        return net.loop.time()

    assert run(net, main()) == 127.0

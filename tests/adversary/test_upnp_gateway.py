"""A hostile UPnP "gateway" (or anyone on the LAN answering in its place) against the client's
UPnP IGD port mapping (:mod:`overlay.media.upnp_io`), with only what it has: it answers the
client's SSDP search and its HTTP requests. Real sockets on loopback addresses.

- It cannot make the client connect anywhere else: a ``LOCATION`` or ``controlURL`` naming
  another host (the "victim") is used for its port and path only, at the gateway's address.
- An SSDP answer from another address than the gateway's port 1900 is never read.
- An endless HTTP answer is cut at 64 KiB and the exchange ends in bounded time; an XML
  entity bomb is refused before any entity is expanded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from overlay.media.upnp_io import UpnpMapping, discover
from tests.unit.test_portmap import loopback_address

DESC = ('<?xml version="1.0"?><root><device><serviceList><service><serviceType>'
        "urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>"
        "http://{victim}:{port}/ctl</controlURL></service></serviceList></device></root>")
SOAP_OK = ('<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
           '<u:{action}Response xmlns:u="x">{body}</u:{action}Response></s:Body></s:Envelope>')
BOMB = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + "a" * 1000 + '">'
        + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(6))
        + ']><root>&g;</root>')

Handler = Callable[[bytes], Awaitable[bytes]]


class Hostile:
    """The gateway's SSDP answerer and HTTP server at ``gateway``, and a "victim" listener at
    another address that counts the connections it gets."""

    def __init__(self, http: Handler, location_host: str | None = None) -> None:
        self.gateway, self.victim = loopback_address(), loopback_address()
        self.http_handler = http
        self.location_host = location_host
        self.victim_hits = 0
        self.http_requests: list[bytes] = []
        self.closers: list[Callable[[], object]] = []

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        http = await asyncio.start_server(self._http, self.gateway, port)
        self.port = http.sockets[0].getsockname()[1]
        victim = await asyncio.start_server(self._victim, self.victim, self.port)
        me = self

        class Ssdp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                host = me.location_host or me.victim
                self.transport.sendto(
                    f"HTTP/1.1 200 OK\r\nST: ssdp:all\r\nLOCATION: http://{host}:{me.port}"
                    "/desc.xml\r\n\r\n".encode(), addr)

        ssdp, _ = await loop.create_datagram_endpoint(Ssdp, local_addr=(self.gateway, 1900))
        self.closers += [http.close, victim.close, ssdp.close]

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            self.http_requests.append(head)
            writer.write(await self.http_handler(head))
            await writer.drain()
        writer.close()

    async def _victim(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.victim_hits += 1
        writer.close()

    def close(self) -> None:
        for close in self.closers:
            close()


def http_ok(body: str) -> bytes:
    data = body.encode()
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


def test_location_and_control_url_never_lead_the_client_elsewhere() -> None:
    async def run() -> None:
        async def http(head: bytes) -> bytes:
            if head.startswith(b"GET "):
                return http_ok(DESC.format(victim=hostile.victim, port=hostile.port))
            action = "GetExternalIPAddress" if b"#GetExternalIPAddress" in head \
                else "AddPortMapping"
            body = ("<NewExternalIPAddress>198.18.0.77</NewExternalIPAddress>"
                    if action == "GetExternalIPAddress" else "")
            return http_ok(SOAP_OK.format(action=action, body=body))

        hostile = Hostile(http)
        await hostile.start()
        try:
            igd = await discover(hostile.gateway)
            assert igd is not None and igd.gateway == hostile.gateway
            assert igd.service.control_path == "/ctl"
            mapping = UpnpMapping.open(igd, "tcp", 45690)
            async with asyncio.timeout(5):
                await mapping.settled.wait()
            assert mapping.mapping is not None
            await mapping.close()
        finally:
            hostile.close()
        assert hostile.victim_hits == 0
        assert [h.split(b" ", 2)[:2] for h in hostile.http_requests] == [
            [b"GET", b"/desc.xml"], [b"POST", b"/ctl"], [b"POST", b"/ctl"], [b"POST", b"/ctl"]]

    asyncio.run(run())


def test_endless_answers_and_entity_bombs_are_refused_in_bounded_time() -> None:
    async def endless(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\n\r\n" + b"<root>" + b"x" * (8 << 20)

    async def bomb(head: bytes) -> bytes:
        return http_ok(BOMB)

    async def run(handler: Handler) -> float:
        hostile = Hostile(handler)
        await hostile.start()
        started = time.monotonic()
        try:
            assert await discover(hostile.gateway) is None
        finally:
            hostile.close()
        assert hostile.victim_hits == 0
        return time.monotonic() - started

    for handler in (endless, bomb):
        assert asyncio.run(run(handler)) < 3.0


def test_ssdp_answers_from_elsewhere_are_not_read() -> None:
    """The search reaches the gateway's port 1900, but the answers come from another host of
    the LAN and from another port of the gateway: neither is read, so there is no IGD (and
    the victim their LOCATION names gets no connection)."""

    async def run() -> None:
        gateway, other = loopback_address(), loopback_address()
        loop = asyncio.get_running_loop()
        victim_hits = 0

        async def victim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal victim_hits
            victim_hits += 1
            writer.close()

        victim_server = await asyncio.start_server(victim, other, 0)
        port = victim_server.sockets[0].getsockname()[1]
        answer = f"HTTP/1.1 200 OK\r\nLOCATION: http://{other}:{port}/d.xml\r\n\r\n"
        senders = [await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=(host, 0))
                   for host in (other, gateway)]
        searches = 0

        class Gateway(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                nonlocal searches
                searches += 1
                for transport, _ in senders:
                    transport.sendto(answer.encode(), addr)

        listener, _ = await loop.create_datagram_endpoint(Gateway, local_addr=(gateway, 1900))
        try:
            async with asyncio.timeout(3):
                assert await discover(gateway) is None
        finally:
            listener.close()
            victim_server.close()
            for transport, _ in senders:
                transport.close()
        assert searches >= 2 and victim_hits == 0

    asyncio.run(run())

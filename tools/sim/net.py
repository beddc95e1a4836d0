"""In-memory datagram and stream transports on the virtual-time loop.

:meth:`SimNet.install` replaces, on one :class:`tools.sim.vloop.VirtualTimeLoop` instance, the
loop methods the real code opens sockets with: ``create_datagram_endpoint`` (the DHT, media
sockets), ``create_connection`` and ``create_server`` (attach sessions, the node's TCP
service; ``asyncio.open_connection``/``start_server`` call these two). The code under test
is unchanged: it gets transports that behave like asyncio's.

Every simulated host (:class:`Host`) has its own IPv4 address, one per /24 (DHT routing tables
limit contacts per /24, as distinct homes on the internet would be), a place in the
:class:`tools.sim.world.World`, and counters of what it sent. Addressing: a socket bound to a
host's IP belongs to that host; one bound to ``0.0.0.0`` or opened without ``local_addr``
belongs to the host whose code is running (:data:`CURRENT_HOST`, set by :meth:`SimNet.spawn`
and inherited by every task and callback that code starts).

Delivery: a datagram arrives after the world's one-way delay unless the world loses it, and
only if the destination host is up and has a socket on that port then (else it vanishes, as
UDP to a dead host does). A stream connects after one round trip (``ConnectionRefusedError``
when nothing listens, ``TimeoutError`` after 127 s, Linux's SYN retries, when the host is
down), then carries bytes reliably and in order with the one-way delay; ``write_eof`` and
``close`` reach the peer (``eof_received``) after the bytes written before them, and a peer
whose protocol does not keep the half-open connection closes too. Received data is handed to
the protocol in the receiving host's context (:data:`CURRENT_HOST`). A stream whose peer
vanished (its host failed: no FIN, no RST) stays open, as TCP does, unless the code asked its
socket for keepalive (``SO_KEEPALIVE``, ``TCP_KEEPIDLE``, ``TCP_KEEPINTVL``, ``TCP_KEEPCNT``):
then it ends with ``TimeoutError`` when the kernel would give up, the last unanswered probe
``idle + interval x count`` after the last traffic, or ``interval x count`` after the peer
vanished if that is later.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tools.sim.world import Place, World

#: the simulated host whose code is running
CURRENT_HOST: contextvars.ContextVar[Host] = contextvars.ContextVar("sim_current_host")

#: IPv4 (20) + UDP (8) header bytes counted on every datagram
UDP_OVERHEAD = 28
MAX_DATAGRAM = 65507
FIRST_EPHEMERAL_PORT = 32768
SYN_TIMEOUT_S = 127.0

Address = tuple[str, int]


@dataclass
class Host:
    """One simulated machine."""

    index: int
    ip: str
    place: Place
    up: bool = True
    #: UDP datagrams and their bytes (IP/UDP headers included) this host sent
    sent_datagrams: int = 0
    sent_bytes: int = 0
    #: TCP payload bytes this host wrote
    stream_bytes: int = 0
    udp: dict[int, SimDatagramTransport] = field(default_factory=dict)
    listeners: dict[int, SimServer] = field(default_factory=dict)
    streams: set[SimStreamTransport] = field(default_factory=set)
    next_port: int = FIRST_EPHEMERAL_PORT
    context: contextvars.Context = field(default_factory=contextvars.Context)

    def free_port(self) -> int:
        while self.next_port in self.udp or self.next_port in self.listeners:
            self.next_port += 1
        port = self.next_port
        self.next_port += 1
        return port


def host_ip(index: int) -> str:
    """Host ``index``'s address: 127.A.B.1 with (A, B) counting /24s from 127.1.0.0.
    127/8 like the in-process test networks (tests/helpers/netutil.py), so address-scope
    checks treat every host alike; 65,024 hosts at most."""
    a, b = divmod(index, 256)
    if a >= 254:
        raise ValueError("at most 65,024 simulated hosts")
    return f"127.{1 + a}.{b}.1"


class SimNet:
    """The simulated internet of one run: hosts, the world model, and the loop's sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, world: World) -> None:
        self.loop = loop
        self.world = world
        self.hosts: list[Host] = []
        self.by_ip: dict[str, Host] = {}
        self.datagrams_lost = 0
        self.datagrams_undeliverable = 0

    # -- hosts ----------------------------------------------------------------------------

    def add_host(self, region: str | None = None) -> Host:
        index = len(self.hosts)
        host = Host(index, host_ip(index), self.world.place(region))
        host.context.run(CURRENT_HOST.set, host)
        self.hosts.append(host)
        self.by_ip[host.ip] = host
        return host

    def spawn(self, host: Host, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as ``host``'s code (its tasks and sockets belong to that host)."""
        return self.loop.create_task(coro, context=host.context.copy())

    def fail(self, host: Host) -> None:
        """``host`` loses power: its sockets vanish with no goodbye to anyone."""
        host.up = False
        for server in list(host.listeners.values()):
            server.close()
        for transport in list(host.udp.values()):
            transport.close()
        for stream in list(host.streams):
            stream.abort()

    def recover(self, host: Host) -> None:
        """``host`` is back (with no sockets: its code opens them again)."""
        host.up = True

    def one_way_s(self, a: Host, b: Host) -> float:
        return self.world.one_way_s(a.place, a.index, b.place, b.index)

    def _host_for(self, ip: str | None) -> Host:
        if ip in (None, "", "0.0.0.0"):
            host = CURRENT_HOST.get(None)
            if host is None:
                raise RuntimeError("no simulated host: bind to a host IP or use SimNet.spawn")
            return host
        found = self.by_ip.get(str(ip))
        if found is None:
            raise OSError(99, f"cannot assign requested address {ip!r}")
        return found

    def _in(self, host: Host, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` ``delay`` s from now as ``host``'s code."""
        self.loop.call_at(self.loop.time() + delay, callback, *args, context=host.context)

    # -- the loop methods -----------------------------------------------------------------

    def install(self) -> None:
        loop: Any = self.loop
        loop.create_datagram_endpoint = self.create_datagram_endpoint
        loop.create_connection = self.create_connection
        loop.create_server = self.create_server

    async def create_datagram_endpoint(
        self, protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None, remote_addr: Address | None = None, **_: Any,
    ) -> tuple[SimDatagramTransport, asyncio.DatagramProtocol]:
        host = self._host_for(local_addr[0] if local_addr else None)
        port = local_addr[1] if local_addr and local_addr[1] else host.free_port()
        if port in host.udp:
            raise OSError(98, f"address already in use: {host.ip}:{port}")
        protocol = protocol_factory()
        transport = SimDatagramTransport(self, host, port, protocol, remote_addr)
        host.udp[port] = transport
        self.loop.call_soon(protocol.connection_made, transport, context=host.context)
        return transport, protocol

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.Protocol], host: str | None = None,
        port: int | None = None, *, local_addr: Address | None = None, ssl: Any = None,
        **_: Any,
    ) -> tuple[SimStreamTransport, asyncio.Protocol]:
        if ssl:
            raise NotImplementedError("TLS streams are not simulated")
        if host is None or port is None:
            raise ValueError("host and port are required")
        src = self._host_for(local_addr[0] if local_addr else None)
        dst = self.by_ip.get(host)
        rtt = 2 * self.one_way_s(src, dst) if dst is not None else 0.0
        if dst is None or not dst.up:
            await asyncio.sleep(SYN_TIMEOUT_S)
            raise TimeoutError(f"connect to {host}:{port} timed out")
        await asyncio.sleep(rtt)
        server = dst.listeners.get(port)
        if server is None or not server.serving:
            raise ConnectionRefusedError(111, f"connect to {host}:{port} refused")
        local_port = src.free_port()
        client_proto = protocol_factory()
        client = SimStreamTransport(self, src, local_port, (dst.ip, port), client_proto)
        server_proto = server.protocol_factory()
        accepted = SimStreamTransport(self, dst, port, (src.ip, local_port), server_proto)
        client.peer, accepted.peer = accepted, client
        # the server side accepted half a round trip ago (at the SYN's arrival): hand it the
        # connection now, before any byte the client writes can reach it
        dst.context.copy().run(server_proto.connection_made, accepted)
        client_proto.connection_made(client)
        return client, client_proto

    async def create_server(
        self, protocol_factory: Callable[[], asyncio.Protocol], host: str | None = None,
        port: int | None = None, **_: Any,
    ) -> SimServer:
        owner = self._host_for(host)
        port = port or owner.free_port()
        if port in owner.listeners:
            raise OSError(98, f"address already in use: {owner.ip}:{port}")
        server = SimServer(self.loop, owner, port, protocol_factory)
        owner.listeners[port] = server
        return server


class SimDatagramTransport(asyncio.DatagramTransport):
    def __init__(self, net: SimNet, host: Host, port: int, protocol: asyncio.DatagramProtocol,
                 remote: Address | None) -> None:
        super().__init__()
        self._net, self._host, self._port = net, host, port
        self._protocol = protocol
        self._remote = remote
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": (self._host.ip, self._port), "peername": self._remote}.get(
            name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._host.udp.get(self._port) is self:
            del self._host.udp[self._port]
        self._net.loop.call_soon(self._protocol.connection_lost, None,
                                 context=self._host.context)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        addr = addr or self._remote
        if addr is None:
            raise ValueError("no destination address")
        if len(data) > MAX_DATAGRAM:
            self._net.loop.call_soon(self._protocol.error_received,
                                     OSError(90, "message too long"), context=self._host.context)
            return
        host = self._host
        host.sent_datagrams += 1
        host.sent_bytes += len(data) + UDP_OVERHEAD
        net = self._net
        dst = net.by_ip.get(addr[0])
        if dst is None:
            net.datagrams_undeliverable += 1
            return
        if net.world.lost():
            net.datagrams_lost += 1
            return
        net._in(dst, net.one_way_s(host, dst), _deliver_datagram, net, dst, int(addr[1]),
                bytes(data), (host.ip, self._port))


def _deliver_datagram(net: SimNet, dst: Host, port: int, data: bytes, src: Address) -> None:
    transport = dst.udp.get(port) if dst.up else None
    if transport is None:
        net.datagrams_undeliverable += 1
        return
    transport._protocol.datagram_received(data, src)


class SimStreamTransport(asyncio.Transport):
    """One end of a simulated TCP connection."""

    def __init__(self, net: SimNet, host: Host, port: int, remote: Address,
                 protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._net, self._host, self._port = net, host, port
        self._remote = remote
        self._protocol = protocol
        self.peer: SimStreamTransport | None = None
        self._closing = False
        self._lost = False
        self._paused = False
        self._eof_sent = False
        self._held: list[bytes | None] = []
        #: when the last byte this end sent reaches the peer (later bytes queue behind it)
        self._arrival = 0.0
        #: when this end last sent or received anything (keepalive's idle time counts from it)
        self._active_at = net.loop.time()
        self._socket = SimStreamSocket()
        host.streams.add(self)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": (self._host.ip, self._port), "peername": self._remote,
                "socket": self._socket}.get(name, default)

    def _peer_vanished(self) -> None:
        """The peer's host failed: with keepalive, time out when the kernel would."""
        keepalive = self._socket.keepalive()
        if keepalive is None or self._lost:
            return
        idle, interval, count = keepalive
        now = self._net.loop.time()
        gives_up = max(now, self._active_at + idle) + interval * count
        self._net.loop.call_at(gives_up, self._timed_out, context=self._host.context)

    def _timed_out(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._connection_lost(TimeoutError(110, "Connection timed out"))

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        held, self._held = self._held, []
        for chunk in held:
            self._receive(chunk)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Writes never back up (bandwidth is not modelled)."""

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Half-close: the peer reads to the end and may still write back."""
        if not self._eof_sent:
            self._eof_sent = True
            self._send(None)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_sent or not data:
            return
        self._host.stream_bytes += len(data)
        self._send(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _send(self, chunk: bytes | None) -> None:
        """Queue ``chunk`` (None: the connection's end) to the peer, in order."""
        peer = self.peer
        if peer is None:
            return
        net = self._net
        now = net.loop.time()
        self._active_at = now
        self._arrival = max(self._arrival, now + net.one_way_s(self._host, peer._host))
        net.loop.call_at(self._arrival, peer._arrived, chunk, context=peer._host.context)

    def _arrived(self, chunk: bytes | None) -> None:
        if self._lost or not self._host.up:
            return
        self._active_at = self._net.loop.time()
        if self._paused and chunk is not None:
            self._held.append(chunk)
            return
        self._receive(chunk)

    def _receive(self, chunk: bytes | None) -> None:
        if self._lost:
            return
        if chunk is None:
            if not self._protocol.eof_received():
                self.close()
            return
        self._protocol.data_received(chunk)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.write_eof()
        self._net.loop.call_soon(self._connection_lost, context=self._host.context)

    def abort(self) -> None:
        """Gone at once (a reset, or the host lost power): the peer hears nothing."""
        self._closing = True
        self._connection_lost()
        if self.peer is not None:
            self.peer._peer_vanished()

    def _connection_lost(self, exc: Exception | None = None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        self._host.streams.discard(self)
        self._protocol.connection_lost(exc)


class SimStreamSocket:
    """A stream's socket as far as the code under test sets options on it: the keepalive
    it asks for is honoured by :class:`SimStreamTransport`; the rest is recorded."""

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[(level, option)] = int(value)

    def keepalive(self) -> tuple[float, float, int] | None:
        """(idle s, interval s, probes) when keepalive is on, else None (Linux defaults for
        what was not set: 7200 s, 75 s, 9)."""
        o = self.options
        if not o.get((socket.SOL_SOCKET, socket.SO_KEEPALIVE)):
            return None
        return (float(o.get((socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 7200)),
                float(o.get((socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 75)),
                o.get((socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 9))


class _SimSocket:
    """What ``Server.sockets`` entries are asked for: the bound address."""

    def __init__(self, address: Address) -> None:
        self._address = address

    def getsockname(self) -> Address:
        return self._address


class SimServer(asyncio.AbstractServer):
    def __init__(self, loop: asyncio.AbstractEventLoop, host: Host, port: int,
                 protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        self._loop, self._host, self._port = loop, host, port
        self.protocol_factory = protocol_factory
        self.serving = True
        self._closed = loop.create_future()

    @property
    def sockets(self) -> tuple[_SimSocket, ...]:
        return (_SimSocket((self._host.ip, self._port)),) if self.serving else ()

    def close(self) -> None:
        if not self.serving:
            return
        self.serving = False
        if self._host.listeners.get(self._port) is self:
            del self._host.listeners[self._port]
        if not self._closed.done():
            self._closed.set_result(None)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self.serving

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await self._closed

    async def wait_closed(self) -> None:
        await self._closed

"""Port mapping on asyncio: the default gateway (``/proc/net/route``), one UDP socket per
mapping connected to the gateway's port 5351, driving a sans-IO
:class:`~overlay.media.portmap.PortMapper` (``transmit()`` after every input: send what is
due, log its events, re-arm the one timer), and :class:`PortMaps`, the TCP and UDP mappings
of a client's media ports (by PCP or NAT-PMP, else by UPnP IGD,
:mod:`overlay.media.upnp_io`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overlay.core.addresses import Address
from overlay.core.logs import get_logger
from overlay.media.portmap import (
    REQUESTED_LIFETIME_S,
    Event,
    Lost,
    Mapped,
    Mapping,
    PortMapper,
    RouterReset,
    Unavailable,
)
from overlay.media.portmap_wire import NONCE_BYTES, PORT, Protocol
from overlay.media.upnp_io import Igd, UpnpMapping, discover

log = get_logger(__name__)

ROUTE_TABLE = Path("/proc/net/route")
RTF_UP, RTF_GATEWAY = 0x1, 0x2
CLOSE_TIMEOUT_S = 2.0
#: a mapping lost or unavailable is asked for again when candidates are gathered this long
#: after the last attempt began (a router that rebooted, or came back)
RETRY_AFTER_S = 60.0


def parse_default_gateway(route_table: str) -> str | None:
    """The IPv4 gateway of the default route in ``/proc/net/route`` text, if there is one
    (the lowest metric wins)."""
    best: tuple[int, str] | None = None
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gateway, flags = int(fields[1], 16), int(fields[2], 16), int(fields[3], 16)
            mask, metric = int(fields[7], 16), int(fields[6])
        except ValueError:
            continue
        if dest or mask or not flags & RTF_UP or not flags & RTF_GATEWAY or not gateway:
            continue
        ip = socket.inet_ntoa(struct.pack("<I", gateway))
        if best is None or metric < best[0]:
            best = (metric, ip)
    return best[1] if best else None


def default_gateway(table: Path = ROUTE_TABLE) -> str | None:
    """This network namespace's default IPv4 gateway, or None."""
    try:
        return parse_default_gateway(table.read_text())
    except OSError:
        return None


class _Datagrams(asyncio.DatagramProtocol):
    owner: PortMapping | None = None  # set once the socket exists

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.owner is not None:
            self.owner.mapper.receive_datagram(data, (addr[0], addr[1]), time.monotonic())
            self.owner.transmit()

    def error_received(self, exc: Exception) -> None:
        if self.owner is not None and isinstance(exc, ConnectionRefusedError):
            self.owner.mapper.unreachable(time.monotonic())
            self.owner.transmit()


class PortMapping:
    """One mapping, kept while this object is open: :attr:`mapping` is what the router
    granted (None before, and after it was lost), renewed on the core's timer."""

    def __init__(self, mapper: PortMapper, transport: asyncio.DatagramTransport) -> None:
        self.mapper = mapper
        self.transport = transport
        self.settled = asyncio.Event()  # mapped, or unavailable
        self.closed = asyncio.Event()
        self.started = time.monotonic()
        #: seconds from the first request to the first grant
        self.time_to_map: float | None = None
        self.renewals = 0
        #: called with every event of the core, after it was handled here
        self.on_event: Callable[[Event], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._log = log.bind(protocol=mapper.protocol, internal_port=mapper.internal_port,
                             gateway=mapper.gateway)

    @classmethod
    async def open(cls, gateway: str, protocol: Protocol, internal_port: int,
                   lifetime: int = REQUESTED_LIFETIME_S) -> PortMapping:
        loop = asyncio.get_running_loop()
        transport, datagrams = await loop.create_datagram_endpoint(
            _Datagrams, remote_addr=(gateway, PORT))
        client_ip = str(transport.get_extra_info("sockname")[0])
        mapper = PortMapper(gateway, client_ip, protocol, internal_port,
                            os.urandom(NONCE_BYTES), lifetime)
        self = cls(mapper, transport)
        datagrams.owner = self
        mapper.start(time.monotonic())
        self.transmit()
        return self

    @property
    def mapping(self) -> Mapping | None:
        return self.mapper.mapping

    @property
    def state(self) -> str:
        return self.mapper.state

    def transmit(self) -> None:
        now = time.monotonic()
        for data, _addr in self.mapper.datagrams_to_send(now):
            if not self.transport.is_closing():
                self.transport.sendto(data)
        while (event := self.mapper.next_event()) is not None:
            self._on_event(event, now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.mapper.get_timer()
        if deadline is not None and not self.closed.is_set():
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.mapper.handle_timer(time.monotonic())
        self.transmit()

    def _on_event(self, event: Event, now: float) -> None:
        if isinstance(event, Mapped):
            m = event.mapping
            if event.renewed:
                self.renewals += 1
            elif self.time_to_map is None:
                self.time_to_map = now - self.started
            self._log.info("port_mapped", external=f"{m.external_ip}:{m.external_port}",
                           lifetime=m.lifetime, method=m.method, renewed=event.renewed,
                           seconds=round(now - self.started, 4))
            self.settled.set()
        elif isinstance(event, Unavailable):
            self._log.info("port_mapping_unavailable", reason=event.reason)
            self.settled.set()
            self._close_transport()
        elif isinstance(event, Lost):
            self._log.warning("port_mapping_lost", reason=event.reason)
            self._close_transport()
        elif isinstance(event, RouterReset):
            self._log.info("port_mapping_router_reset")
        else:
            self._log.info("port_mapping_deleted", confirmed=event.confirmed)
            self._close_transport()
        if self.on_event is not None:
            self.on_event(event)

    def _close_transport(self) -> None:
        self.closed.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.close()

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Delete the mapping at the router (waits up to ``timeout`` for its answer)."""
        if self.closed.is_set():
            return
        self.mapper.close(time.monotonic())
        self.transmit()
        if self.mapper.state == "closed":
            self._close_transport()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.closed.wait()
        self._close_transport()

    def to_json(self) -> dict[str, Any]:
        m = self.mapping
        return {"state": self.mapper.state, "method": m.method if m else None,
                "internal_port": self.mapper.internal_port,
                "external": f"{m.external_ip}:{m.external_port}" if m else None,
                "lifetime": m.lifetime if m else None, "renewals": self.renewals,
                "seconds_to_map": round(self.time_to_map, 4) if self.time_to_map else None}


class PortMaps:
    """The mappings of a client's media ports (its TCP listener and its UDP socket) from the
    default gateway, kept until :meth:`close`."""

    def __init__(self) -> None:
        self.gateway: str | None = None
        self.maps: dict[Protocol, PortMapping | UpnpMapping] = {}
        self.ports: dict[Protocol, int] = {}
        self.started = asyncio.Event()  # every mapping asked for (or failed to be)
        #: UPnP IGD tried after PCP and NAT-PMP gave nothing, per protocol
        self._upnp: dict[Protocol, asyncio.Task[None]] = {}
        self._igd: asyncio.Task[Igd | None] | None = None  # one discovery for both

    async def start(self, gateway: str, tcp_port: int | None, udp_port: int | None) -> None:
        self.gateway = gateway
        wanted: tuple[tuple[Protocol, int | None], ...] = (("tcp", tcp_port), ("udp", udp_port))
        try:
            for protocol, port in wanted:
                if port:
                    self.ports[protocol] = port
                    await self._open(protocol)
        finally:
            self.started.set()

    async def _open(self, protocol: Protocol) -> None:
        assert self.gateway is not None
        try:
            mapping = await PortMapping.open(self.gateway, protocol, self.ports[protocol])
        except OSError as exc:  # no route to the gateway, say
            log.info("port_mapping_unavailable", protocol=protocol, gateway=self.gateway,
                     reason=str(exc))
            return
        self.maps[protocol] = mapping
        mapping.on_event = lambda event: self._on_event(mapping, event)

    def _on_event(self, source: PortMapping, event: Event) -> None:
        """A router that restarted lost every mapping: renew the others now. No PCP or
        NAT-PMP mapping to be had: try UPnP IGD."""
        if isinstance(event, RouterReset):
            for m in self.maps.values():
                if m is not source and isinstance(m, PortMapping) and not m.closed.is_set():
                    m.mapper.renew_now(time.monotonic())
                    m.transmit()
        elif isinstance(event, Unavailable) and self.maps.get(source.mapper.protocol) is source:
            protocol = source.mapper.protocol
            self._upnp[protocol] = asyncio.get_running_loop().create_task(
                self._open_upnp(protocol))

    async def _open_upnp(self, protocol: Protocol) -> None:
        assert self.gateway is not None
        if self._igd is None:
            self._igd = asyncio.get_running_loop().create_task(discover(self.gateway))
        igd = await asyncio.shield(self._igd)
        if igd is None:
            return
        mapping = UpnpMapping.open(igd, protocol, self.ports[protocol])
        self.maps[protocol] = mapping
        await mapping.settled.wait()

    async def retry(self, now: float) -> None:
        """Ask again for mappings that were lost or unavailable, :data:`RETRY_AFTER_S` after
        the last attempt began."""
        if not self.started.is_set():
            return
        for protocol in self.ports:
            m = self.maps.get(protocol)
            if m is not None and m.state in ("lost", "unavailable") \
                    and now - m.started >= RETRY_AFTER_S:
                self._igd = None  # discover again, the router may have changed
                await self._open(protocol)

    async def wait_settled(self, timeout: float) -> None:
        """Until every mapping is granted or known unavailable, at most ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.started.wait()
                for m in list(self.maps.values()):
                    await m.settled.wait()
                if self._upnp:  # asyncio.wait: a timeout here does not cancel them
                    await asyncio.wait(list(self._upnp.values()))

    def mapped(self, protocol: Protocol) -> tuple[Address, ...]:
        """The mapped external address of our ``protocol`` port, if the router granted one."""
        m = self.maps.get(protocol)
        mapping = m.mapping if m is not None else None
        return (mapping.external,) if mapping is not None else ()

    def to_json(self) -> dict[str, Any]:
        return {"gateway": self.gateway,
                **{proto: m.to_json() for proto, m in self.maps.items()}}

    async def close(self) -> None:
        for task in [*self._upnp.values(), *([self._igd] if self._igd else [])]:
            task.cancel()
        await asyncio.gather(*self._upnp.values(), *([self._igd] if self._igd else []),
                             return_exceptions=True)
        await asyncio.gather(*(m.close() for m in self.maps.values()))

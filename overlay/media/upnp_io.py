"""UPnP IGD port mapping on asyncio (the messages are :mod:`overlay.media.upnp_wire`'s): find
the gateway's Internet Gateway Device (:func:`discover`: SSDP unicast to the gateway's port
1900, then its description over HTTP), and keep one mapping there (:class:`UpnpMapping`:
``AddPortMapping`` and ``GetExternalIPAddress``, the same ``AddPortMapping`` again at half the
lease, ``DeletePortMapping`` on close), the way Tailscale's ``net/portmapper/upnp.go`` does.
Only the gateway's address is ever contacted; every HTTP exchange is one request on its own
connection (``Connection: close``), bounded in time and size."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

from overlay.core.logs import get_logger
from overlay.media.candidate_policy import PUBLIC, scope
from overlay.media.portmap import Mapping
from overlay.media.portmap_wire import Protocol
from overlay.media.upnp_wire import (
    CONFLICT,
    MAX_HTTP_BYTES,
    PERMANENT_LEASE_RETRY,
    SEARCH_TARGETS,
    SSDP_PORT,
    BadUpnpMessage,
    HttpAnswer,
    SsdpAnswer,
    UpnpFault,
    WanService,
    find_wan_service,
    http_get,
    msearch,
    parse_http_answer,
    parse_soap_answer,
    parse_ssdp_answer,
    soap_request,
)

log = get_logger(__name__)

#: the M-SEARCH goes out at 0, 0.25 and 0.75 s; no answer by 1.75 s: no IGD
SSDP_RETRANSMITS = (0.25, 0.5, 1.0)
#: one HTTP exchange with the gateway (Tailscale allows the description one second)
HTTP_TIMEOUT_S = 2.0
#: the lease we ask for; IGD cannot tell us a shorter one, so we renew at half of it
LEASE_S = 3600
MIN_RETRY_S = 1.0
DESCRIPTION = "overlay"


@dataclass(frozen=True)
class Igd:
    """A gateway's port-mapping service: HTTP at ``gateway:port``, and our address towards
    it (the internal client of our mappings)."""

    gateway: str
    port: int
    service: WanService
    client_ip: str


class _Ssdp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.answers.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):  # nothing listens on port 1900
            with contextlib.suppress(asyncio.QueueFull):
                self.answers.put_nowait(b"")


async def discover(gateway: str) -> Igd | None:
    """The gateway's IGD port-mapping service, or None when it has none (or says nonsense).
    The socket is connected to ``(gateway, 1900)``: answers from anywhere else never arrive."""
    loop = asyncio.get_running_loop()
    try:
        transport, ssdp = await loop.create_datagram_endpoint(
            _Ssdp, remote_addr=(gateway, SSDP_PORT))
    except OSError as exc:
        log.info("upnp_unavailable", gateway=gateway, reason=str(exc))
        return None
    client_ip = str(transport.get_extra_info("sockname")[0])
    try:
        location = await _search(transport, ssdp)
        if location is None:
            log.info("upnp_unavailable", gateway=gateway, reason="no SSDP answer")
            return None
        answer = await http_exchange(gateway, location.port,
                                     http_get(gateway, location.port, location.path))
        if answer.status != 200:
            raise BadUpnpMessage(f"description: HTTP {answer.status}")
        return Igd(gateway, location.port, find_wan_service(answer.body), client_ip)
    except (BadUpnpMessage, OSError, TimeoutError) as exc:
        log.info("upnp_unavailable", gateway=gateway, reason=str(exc) or type(exc).__name__)
        return None
    finally:
        transport.close()


async def _search(transport: asyncio.DatagramTransport, ssdp: _Ssdp) -> SsdpAnswer | None:
    for wait in SSDP_RETRANSMITS:
        for target in SEARCH_TARGETS:
            transport.sendto(msearch(target))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    data = await ssdp.answers.get()
            except TimeoutError:
                break
            if not data:
                return None
            with contextlib.suppress(BadUpnpMessage):
                return parse_ssdp_answer(data)
    return None


async def http_exchange(gateway: str, port: int, request: bytes) -> HttpAnswer:
    """Send ``request`` to ``gateway:port`` and read the answer to the end of the connection:
    at most :data:`MAX_HTTP_BYTES`, within :data:`HTTP_TIMEOUT_S`."""
    async with asyncio.timeout(HTTP_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(gateway, port)
        try:
            writer.write(request)
            data = b""
            while chunk := await reader.read(16384):
                data += chunk
                if len(data) > MAX_HTTP_BYTES:
                    raise BadUpnpMessage("HTTP answer too long")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return parse_http_answer(data)


async def soap_call(igd: Igd, action: str, *arguments: tuple[str, str]) -> dict[str, str]:
    request = soap_request(igd.gateway, igd.port, igd.service, action, arguments)
    return parse_soap_answer(await http_exchange(igd.gateway, igd.port, request), action)


class UpnpMapping:
    """One mapping at an IGD, kept while this object is open (the same surface as
    :class:`overlay.media.portmap_io.PortMapping`)."""

    def __init__(self, igd: Igd, protocol: Protocol, internal_port: int,
                 lease: int = LEASE_S) -> None:
        self.igd = igd
        self.protocol = protocol
        self.internal_port = internal_port
        self.lease = lease
        self.state = "requesting"
        self.mapping: Mapping | None = None
        self.settled = asyncio.Event()
        self.closed = asyncio.Event()
        self.started = time.monotonic()
        self.time_to_map: float | None = None
        self.renewals = 0
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(protocol=protocol, internal_port=internal_port,
                             gateway=igd.gateway, method="upnp")

    @classmethod
    def open(cls, igd: Igd, protocol: Protocol, internal_port: int,
             lease: int = LEASE_S) -> UpnpMapping:
        self = cls(igd, protocol, internal_port, lease)
        self._task = asyncio.get_running_loop().create_task(self._keep())
        return self

    async def _keep(self) -> None:
        try:
            self._granted(*await self._add(None), renewed=False)
        except (UpnpFault, BadUpnpMessage, OSError, TimeoutError) as exc:
            self._end("unavailable", "port_mapping_unavailable", str(exc) or type(exc).__name__)
            return
        while self.mapping is not None:
            m = self.mapping
            retry_at = m.renew_at
            while True:
                await asyncio.sleep(max(0.0, retry_at - time.monotonic()))
                try:
                    self._granted(*await self._add(m.external_port), renewed=True)
                    break
                except (UpnpFault, BadUpnpMessage, OSError, TimeoutError) as exc:
                    left = m.expires_at - time.monotonic()
                    if left <= 0:
                        self._end("lost", "port_mapping_lost", str(exc) or type(exc).__name__)
                        return
                    retry_at = time.monotonic() + max(left / 2, min(MIN_RETRY_S, left))

    async def _add(self, held_port: int | None) -> tuple[str, int, int]:
        """AddPortMapping (the held external port, else the internal one): ``(external IP,
        external port, lease)``. Like Tailscale: a permanent lease when a lease is refused
        (402, 725); another port when ours is taken (718, first mapping only)."""
        port, lease = held_port or self.internal_port, self.lease
        for _ in range(4):
            try:
                await soap_call(
                    self.igd, "AddPortMapping", ("NewRemoteHost", ""),
                    ("NewExternalPort", str(port)), ("NewProtocol", self.protocol.upper()),
                    ("NewInternalPort", str(self.internal_port)),
                    ("NewInternalClient", self.igd.client_ip), ("NewEnabled", "1"),
                    ("NewPortMappingDescription", DESCRIPTION),
                    ("NewLeaseDuration", str(lease)))
                break
            except UpnpFault as fault:
                if fault.code in PERMANENT_LEASE_RETRY and lease:
                    lease = 0
                elif fault.code == CONFLICT and held_port is None:
                    port = random.randint(20000, 60000)
                else:
                    raise
        else:
            raise BadUpnpMessage("no mapping after 4 AddPortMapping calls")
        ip = (await soap_call(self.igd, "GetExternalIPAddress")).get("NewExternalIPAddress", "")
        if scope(ip) != PUBLIC:  # unspecified, loopback, or a router behind another NAT
            raise BadUpnpMessage(f"external address {ip!r} is not a public address")
        return ip, port, lease

    def _granted(self, ip: str, port: int, lease: int, renewed: bool) -> None:
        now = time.monotonic()
        self.mapping = Mapping(self.protocol, self.internal_port, ip, port, lease or LEASE_S,
                               now, "upnp")
        self.state = "mapped"
        if renewed:
            self.renewals += 1
        elif self.time_to_map is None:
            self.time_to_map = now - self.started
        self._log.info("port_mapped", external=f"{ip}:{port}", lifetime=lease,
                       renewed=renewed, seconds=round(now - self.started, 4))
        self.settled.set()

    def _end(self, state: str, event: str, reason: str) -> None:
        self.state = state
        self.mapping = None
        self._log.info(event, reason=reason)
        self.settled.set()
        self.closed.set()

    async def close(self, timeout: float = 2.0) -> None:
        """Delete the mapping at the gateway (waits up to ``timeout``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        m, self.mapping = self.mapping, None
        if m is not None:
            confirmed = False
            with contextlib.suppress(UpnpFault, BadUpnpMessage, OSError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await soap_call(self.igd, "DeletePortMapping", ("NewRemoteHost", ""),
                                    ("NewExternalPort", str(m.external_port)),
                                    ("NewProtocol", self.protocol.upper()))
                    confirmed = True
            self._log.info("port_mapping_deleted", confirmed=confirmed)
        self.state = "closed"
        self.closed.set()

    def to_json(self) -> dict[str, Any]:
        m = self.mapping
        return {"state": self.state, "method": "upnp", "internal_port": self.internal_port,
                "external": f"{m.external_ip}:{m.external_port}" if m else None,
                "lifetime": m.lifetime if m else None, "renewals": self.renewals,
                "seconds_to_map": round(self.time_to_map, 4) if self.time_to_map else None}

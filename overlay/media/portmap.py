"""Asking the router for a port mapping (sans-IO): one :class:`PortMapper` per mapping
(protocol, internal port), in the project's datagram-core vocabulary (``receive_datagram``,
``datagrams_to_send``, ``get_timer``, ``handle_timer``), like Tailscale's
``net/portmapper`` (PCP first, NAT-PMP as the fallback; UPnP IGD, the third method, is
:mod:`overlay.media.upnp_io`'s, tried when this core ends :class:`Unavailable`).

- **Getting one.** A PCP MAP request goes to the gateway's port 5351 at once and again
  0.25 and 0.75 s later (RFC 6887 starts at 3 s and never stops; a client that waits that
  long has no mapping when the user sends a file, so, like Tailscale, we stay quick and
  bounded). No answer by 1.75 s, or a NAT-PMP "unsupported version" answer, moves to NAT-PMP (a map
  request and an external-address request, same schedule). A PCP refusal (``NOT_AUTHORIZED``,
  ``NO_RESOURCES``...) or a NAT-PMP one ends it: :class:`Unavailable`. So a router that
  speaks neither costs 3.5 s of background datagrams, one that is closed (ICMP port
  unreachable, :meth:`PortMapper.unreachable`) nothing more.
- **Keeping it.** A granted mapping (:class:`Mapping`) is renewed at half its lifetime (the
  same request; PCP with the same nonce, suggesting the external address and port we hold).
  A renewal that gets no answer is tried again at half the remaining time, down to 1 s; once
  the lifetime is over without an answer the mapping is :class:`Lost`. An answer whose
  epoch goes back, or drifts from our clock (RFC 6887 8.5), means the router restarted and
  lost its mappings: :class:`RouterReset`, and the adapter renews the other mappings now.
- **Giving it back.** :meth:`PortMapper.close` sends the same request with lifetime 0 (a
  delete; same schedule) and ends :class:`Deleted` on the answer or when the tries run out.

Answers are accepted only from ``(gateway, 5351)``, only when they match what we asked
(PCP: nonce, protocol, internal port; NAT-PMP: opcode and internal port), and only in a state
that awaits one; anything malformed is counted (:attr:`PortMapper.ignored`) and dropped. A
mapping whose external address is not public (a router behind another NAT) is no use to a
peer: it counts as refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from overlay.core.addresses import Address
from overlay.media.candidate_policy import LOOPBACK, PUBLIC, scope
from overlay.media.portmap_wire import (
    IANA,
    PCP_VERSION,
    PMP_UNSUPPORTED_VERSION,
    PMP_VERSION,
    PORT,
    BadPortMapMessage,
    PcpMapRequest,
    PcpMapResponse,
    PmpErrorResponse,
    PmpExternalRequest,
    PmpExternalResponse,
    PmpMapRequest,
    PmpMapResponse,
    Protocol,
    decode_response,
    result_name,
)

#: seconds from each send of a request to the next; after the last gap it has failed
#: (sends at 0, 0.25 and 0.75 s, given up at 1.75 s)
RETRANSMITS = (0.25, 0.5, 1.0)
#: what we ask for (Tailscale asks for 2 h too); the router may grant less
REQUESTED_LIFETIME_S = 7200
MIN_RENEW_RETRY_S = 1.0

Method = Literal["pcp", "nat-pmp", "upnp"]
State = Literal["idle", "requesting", "mapped", "deleting", "unavailable", "lost", "closed"]


def behind_nat(local_ip: str, reflexive_host: str) -> bool:
    """Whether to ask the gateway for mappings: the supernode sees us at another address
    than our own (a NAT is on the way). Never for a loopback overlay (no router on the way;
    the machine's real gateway is not asked)."""
    return (local_ip != reflexive_host and LOOPBACK not in (scope(local_ip), scope(reflexive_host)))


@dataclass(frozen=True)
class Mapping:
    """A mapping the router granted: ``external_ip:external_port`` reaches
    ``internal_port`` until ``expires_at`` (monotonic seconds)."""

    protocol: Protocol
    internal_port: int
    external_ip: str
    external_port: int
    lifetime: int
    granted_at: float
    method: Method

    @property
    def external(self) -> Address:
        return (self.external_ip, self.external_port)

    @property
    def expires_at(self) -> float:
        return self.granted_at + self.lifetime

    @property
    def renew_at(self) -> float:
        return self.granted_at + self.lifetime / 2


@dataclass(frozen=True)
class Mapped:
    mapping: Mapping
    renewed: bool


@dataclass(frozen=True)
class Unavailable:
    reason: str


@dataclass(frozen=True)
class Lost:
    reason: str


@dataclass(frozen=True)
class Deleted:
    confirmed: bool


@dataclass(frozen=True)
class RouterReset:
    """The router's epoch went back (RFC 6887 8.5, RFC 6886 3.6): it restarted and lost its
    mappings. This mapping was just granted again; every other one should be renewed now."""


Event = Mapped | Unavailable | Lost | Deleted | RouterReset


@dataclass
class _Pending:
    """The request in flight: its datagrams, how often they went out, when next."""

    datagrams: list[bytes]
    sent: int = 0
    next_at: float = 0.0


@dataclass
class PortMapper:
    """One mapping of ``protocol`` ``internal_port`` from the router at ``gateway``.

    ``client_ip`` is our address on the link to the gateway (PCP carries it and the router
    checks it against the datagram's source); ``nonce`` (12 random bytes) identifies the
    mapping to a PCP router across renewals and the delete."""

    gateway: str
    client_ip: str
    protocol: Protocol
    internal_port: int
    nonce: bytes
    lifetime: int = REQUESTED_LIFETIME_S
    retransmits: tuple[float, ...] = RETRANSMITS
    state: State = "idle"
    method: Method = "pcp"
    mapping: Mapping | None = None
    #: answers dropped: malformed, from elsewhere, not matching, or not awaited
    ignored: int = 0
    _pending: _Pending | None = None
    _renew_at: float | None = None
    _pmp_port: tuple[int, int] | None = None  # (external port, lifetime) from NAT-PMP
    _pmp_ip: str | None = None
    _epoch: tuple[int, float] | None = None  # the router's last epoch, and when we saw it
    _out: list[bytes] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)

    @property
    def server(self) -> Address:
        return (self.gateway, PORT)

    # -- inputs ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Ask for the mapping (PCP first)."""
        if self.state != "idle":
            return
        self.state = "requesting"
        self._request("pcp", self.lifetime, now)

    def close(self, now: float) -> None:
        """Delete the mapping (lifetime 0) if we hold one, or may get one (a request is
        still unanswered: its grant may be on the way); otherwise just stop."""
        if self.state in ("closed", "deleting"):
            return
        if self.mapping is None and self.state != "requesting":
            self._finish("closed", None)
            return
        method = self.mapping.method if self.mapping is not None else self.method
        self.state = "deleting"
        self._renew_at = None
        self._request(method, 0, now)

    def unreachable(self, now: float) -> None:
        """The gateway said nothing listens on its port 5351 (ICMP port unreachable)."""
        if self.state == "requesting" and self.mapping is None:
            self._finish("unavailable", Unavailable("nothing listens on the gateway's port 5351"))
        elif self.state == "deleting":
            self._finish("closed", Deleted(False))

    def renew_now(self, now: float) -> None:
        """Renew at once (another mapping saw the router restart)."""
        if self.state == "mapped" and self._pending is None:
            self._renew_at = now

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if (addr[0], addr[1]) != self.server or self._pending is None:
            self.ignored += 1
            return
        try:
            msg = decode_response(data)
        except BadPortMapMessage:
            self.ignored += 1
            return
        if isinstance(msg, PcpMapResponse) and self.method == "pcp":
            self._on_pcp(msg, now)
        elif isinstance(msg, PmpErrorResponse) and self.method == "pcp" \
                and msg.result == PMP_UNSUPPORTED_VERSION and self.state == "requesting":
            self._request("nat-pmp", self.lifetime, now)  # a NAT-PMP-only router
        elif isinstance(msg, PmpMapResponse | PmpExternalResponse | PmpErrorResponse) \
                and self.method == "nat-pmp":
            self._on_pmp(msg, now)
        else:
            self.ignored += 1

    def handle_timer(self, now: float) -> None:
        pending = self._pending
        if pending is not None and now >= pending.next_at:
            if pending.sent < len(self.retransmits):
                self._send(now)
            else:
                self._gave_up(now)
        if self.mapping is not None and self.state == "mapped" and now >= self.mapping.expires_at:
            self._finish("lost", Lost("the router did not renew the mapping before it expired"))
            return
        if self._renew_at is not None and now >= self._renew_at and self._pending is None \
                and self.mapping is not None:
            self._renew_at = None
            self._request(self.mapping.method, self.lifetime, now)

    # -- outputs -----------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return [(d, self.server) for d in out]

    def get_timer(self) -> float | None:
        times = []
        if self._pending is not None:
            times.append(self._pending.next_at)
        if self._renew_at is not None:
            times.append(self._renew_at)
        if self.mapping is not None and self.state == "mapped":
            times.append(self.mapping.expires_at)
        return min(times) if times else None

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    # -- inside ------------------------------------------------------------------------------

    def _request(self, method: Method, lifetime: int, now: float) -> None:
        self.method = method
        held = self.mapping
        if method == "pcp":
            datagrams = [PcpMapRequest(
                self.nonce, self.protocol, self.internal_port, lifetime, self.client_ip,
                suggested_port=held.external_port if held else self.internal_port,
                suggested_ip=held.external_ip if held else "0.0.0.0").encode()]
        else:
            self._pmp_port = None
            self._pmp_ip = held.external_ip if held else None
            suggested = 0 if lifetime == 0 else held.external_port if held else self.internal_port
            datagrams = [PmpMapRequest(self.protocol, self.internal_port, lifetime,
                                       suggested).encode()]
            if self._pmp_ip is None:
                datagrams.append(PmpExternalRequest().encode())
        self._pending = _Pending(datagrams)
        self._send(now)

    def _send(self, now: float) -> None:
        pending = self._pending
        assert pending is not None
        self._out.extend(pending.datagrams)
        pending.next_at = now + self.retransmits[min(pending.sent, len(self.retransmits) - 1)]
        pending.sent += 1

    def _gave_up(self, now: float) -> None:
        self._pending = None
        if self.state == "deleting":
            self._finish("closed", Deleted(False))
        elif self.mapping is None:
            if self.method == "pcp":
                self._request("nat-pmp", self.lifetime, now)
            else:
                self._finish("unavailable", Unavailable("no PCP or NAT-PMP answer"))
        else:  # a renewal went unanswered: try again at half the time left
            left = self.mapping.expires_at - now
            if left <= 0:
                self._finish("lost", Lost("no answer to the renewals before it expired"))
            else:
                self._renew_at = now + max(left / 2, min(MIN_RENEW_RETRY_S, left))

    def _finish(self, state: State, event: Event | None) -> None:
        self.state = state
        self._pending = None
        self._renew_at = None
        self.mapping = None
        if event is not None:
            self._events.append(event)

    def _on_pcp(self, msg: PcpMapResponse, now: float) -> None:
        if msg.nonce is not None and (msg.nonce != self.nonce
                                      or msg.protocol != IANA[self.protocol]
                                      or msg.internal_port != self.internal_port):
            self.ignored += 1
            return
        if msg.result != 0:
            reason = f"PCP {result_name(PCP_VERSION, msg.result)}"
            self._refused(reason)
            return
        if msg.nonce is None:
            self.ignored += 1
            return
        reset = self._router_reset(msg.epoch, now)
        self._granted(msg.external_ip, msg.external_port, msg.lifetime, now)
        if reset:
            self._events.append(RouterReset())

    def _on_pmp(self, msg: PmpMapResponse | PmpExternalResponse | PmpErrorResponse,
                now: float) -> None:
        if isinstance(msg, PmpErrorResponse) or msg.result != 0:
            self._refused(f"NAT-PMP {result_name(PMP_VERSION, msg.result)}")
            return
        if isinstance(msg, PmpExternalResponse):
            self._pmp_ip = msg.external_ip
        elif msg.protocol == self.protocol and msg.internal_port == self.internal_port:
            self._pmp_port = (msg.external_port, msg.lifetime)
        else:
            self.ignored += 1
            return
        reset = self._router_reset(msg.epoch, now)
        if self.state == "deleting" and self._pmp_port is not None:
            self._granted("", 0, 0, now)
        elif self._pmp_port is not None and self._pmp_ip is not None:
            self._granted(self._pmp_ip, self._pmp_port[0], self._pmp_port[1], now)
        if reset and self.state == "mapped":
            self._events.append(RouterReset())

    def _router_reset(self, epoch: int, now: float) -> bool:
        """RFC 6887 8.5: the router's epoch must not go back, nor drift from our clock by
        more than 2 s plus 1/16 of the time between two answers."""
        previous, self._epoch = self._epoch, (epoch, now)
        if previous is None:
            return False
        server_delta, client_delta = epoch - previous[0], now - previous[1]
        return (epoch < previous[0] - 1
                or client_delta + 2 < server_delta - server_delta / 16
                or server_delta + 2 < client_delta - client_delta / 16)

    def _refused(self, reason: str) -> None:
        if self.state == "deleting":
            self._finish("closed", Deleted(False))
        elif self.mapping is None:
            self._finish("unavailable", Unavailable(f"the router refused: {reason}"))
        else:
            self._finish("lost", Lost(f"the router refused the renewal: {reason}"))

    def _granted(self, ip: str, port: int, lifetime: int, now: float) -> None:
        self._pending = None
        if self.state == "deleting":
            self._finish("closed", Deleted(True))
            return
        if lifetime <= 0 or port == 0 or not ip:
            self._refused("a mapping with no lifetime, port or address")
            return
        if scope(ip) != PUBLIC:  # double NAT, or nonsense: no peer could dial it
            self._refused(f"its external address {ip} is not a public address")
            return
        renewed = self.mapping is not None
        self.mapping = Mapping(self.protocol, self.internal_port, ip, port, lifetime, now,
                               self.method)
        self.state = "mapped"
        self._renew_at = self.mapping.renew_at
        self._events.append(Mapped(self.mapping, renewed))

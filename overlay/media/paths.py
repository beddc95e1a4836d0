"""A client's ways to a peer: its own candidates (listener, UDP socket, router mappings), the
direct attempts raced to the peer's candidates, when each starts (:mod:`.direct_paths`), how
each raced path is secured, and how races turned out (:class:`ConnectStats`).

:class:`Paths` owns the media listener, the UDP socket and the port mappings; the relay
attempts are :mod:`.relay_paths`', the invite and its race :mod:`.path_opening`'s (caller)
and :mod:`.callee`'s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from structlog.typing import FilteringBoundLogger

from overlay.attach.adapter import ClientSession
from overlay.core.addresses import Address
from overlay.core.logs import get_logger
from overlay.media import (
    call_relays,
    candidate_policy,
    direct_paths,
    portmap,
    tcp_punch,
    techniques,
    transport_hooks,
)
from overlay.media.attachment import AttachmentPort
from overlay.media.connect import (
    Attempt,
    Securer,
    Timeline,
    default_staggers,
)
from overlay.media.connect_stats import ConnectStats
from overlay.media.errors import PathLost
from overlay.media.portmap_io import PortMaps, default_gateway
from overlay.media.session import MediaConfig, Session
from overlay.media.signalling import Candidates
from overlay.media.stream import MediaStream
from overlay.media.tcp_listener import TCP_CONNECT_TIMEOUT_S, MediaListener, dial_tcp
from overlay.media.tcp_punch_io import punch_attempts

log = get_logger(__name__)

ACCEPT_WINDOW_S = TCP_CONNECT_TIMEOUT_S + 2.0
#: how long gathering candidates waits for port mappings still being asked for
PORTMAP_SETTLE_S = 1.0


class Paths:
    """The direct paths of one client (``config``), attached through ``attachment``."""

    def __init__(self, config: MediaConfig, attachment: AttachmentPort) -> None:
        self.config = config
        self.attachment = attachment
        self.listener = MediaListener()
        self.udp: transport_hooks.UdpState | None = None
        #: how path races turned out, per pair of NAT classes and kind of attempt
        self.connect_stats = ConnectStats()
        #: mappings of our media ports from the router (PCP/NAT-PMP), once asked for
        self.portmaps: PortMaps | None = None

    async def start(self) -> None:
        await self.listener.start("0.0.0.0", 0)
        self.udp = await transport_hooks.open_udp()

    async def stop(self) -> None:
        if self.portmaps is not None:
            await self.portmaps.close()  # delete them at the router
        await self.listener.stop()
        if self.udp is not None:
            await transport_hooks.close_udp(self.udp)

    # -- candidates -----------------------------------------------------------------------------

    @staticmethod
    def _local_ip(session: ClientSession) -> str:
        """Our address on the way to the primary supernode."""
        transport = session.proto.transport
        local = transport.get_extra_info("sockname") if transport else None
        return str(local[0]) if local else "127.0.0.1"

    async def map_ports(self, session: ClientSession) -> None:
        """Ask the default gateway for mappings of our TCP listener and UDP socket (once; then
        again for those lost), when the supernode sees us behind a NAT
        (:func:`.portmap.behind_nat`) and ``--no-port-mapping`` was not given."""
        if self.portmaps is not None:
            await self.portmaps.retry(time.monotonic())
            return
        ok = self.attachment.attach_ok()
        if not self.config.port_mapping or ok is None \
                or not portmap.behind_nat(self._local_ip(session), ok.reflexive_host):
            return
        gateway = default_gateway()
        if gateway is None:
            return
        self.portmaps = PortMaps()
        udp_port = self.udp.media.local_address[1] if self.udp is not None else None
        await self.portmaps.start(gateway, self.listener.port, udp_port)

    def port_mapping_status(self) -> dict[str, Any] | None:
        return self.portmaps.to_json() if self.portmaps is not None else None

    def count_race(self, local: Candidates, remote: Candidates, timeline: Timeline | None,
                    setup: Timeline, slog: FilteringBoundLogger) -> None:
        """Count a race (won or not) in :attr:`connect_stats` and log this side's setup
        timeline (``setup``: its steps since it began, then the race's events)."""
        if timeline is None:
            return
        offset = timeline.started - setup.started
        self.connect_stats.record(local.nat, remote.nat, timeline.events, offset)
        slog.info("setup_timeline", local_nat=local.nat, remote_nat=remote.nat, steps=[
            *setup.events, *((round(t + offset, 4), e) for t, e in timeline.events)])

    async def candidates(self, session: ClientSession) -> Candidates:
        local_ip = self._local_ip(session)
        ok = self.attachment.attach_ok()
        tcp = [(local_ip, self.listener.port)]
        if ok is not None and ok.reflexive_host != local_ip:
            tcp.append((ok.reflexive_host, self.listener.port))
        udp: list[Address] = []
        nat = "unknown"
        if self.udp is not None:
            udp, nat = await transport_hooks.udp_candidates(
                self.udp, self.config.identity, local_ip, self.attachment.binding_supernodes(),
                self.attachment.relay_rtts())
        await self.map_ports(session)
        mapped_tcp: tuple[Address, ...] = ()
        mapped_udp: tuple[Address, ...] = ()
        if self.portmaps is not None:  # a mapped address is a public candidate like any other
            await self.portmaps.wait_settled(PORTMAP_SETTLE_S)
            mapped_tcp, mapped_udp = self.portmaps.mapped("tcp"), self.portmaps.mapped("udp")
        return Candidates(tuple(dict.fromkeys((*tcp, *mapped_tcp))),
                          tuple(dict.fromkeys((*udp, *mapped_udp))), nat,
                          self.attachment.reachable(), mapped_tcp, mapped_udp)

    def inbound_via_mapping(self, remote: Candidates) -> bool:
        """A TCP connection from the peer that named ``remote`` can only have reached our
        listener through our mapping: we hold a TCP mapping and the peer is not behind our
        public address (not on our LAN)."""
        ok = self.attachment.attach_ok()
        return (self.portmaps is not None and bool(self.portmaps.mapped("tcp"))
                and ok is not None and ok.reflexive_host not in remote.public_hosts())

    def technique(self, selected: str | None, s: Session, local: Candidates,
                  remote: Candidates) -> str:
        """How the path of attempt ``selected`` got through (:func:`.techniques.technique`),
        between our ``local`` candidates and the peer's ``remote`` ones in session ``s``: the
        one place both the caller's ``send --json`` and the callee's record ask."""
        return techniques.technique(selected, self.inbound_via_mapping(remote),
                                    self.inbound_on_lan(s, remote),
                                    direct_paths.punch_needs_mapping(local, remote))

    # -- paths ----------------------------------------------------------------------------------

    def inbound_on_lan(self, s: Session, remote: Candidates) -> bool:
        """The peer's TCP connection to our listener came from its address on our LAN."""
        return s.accepted_from is not None and candidate_policy.on_shared_lan(
            s.accepted_from, self.own_reflexive(), remote.public_hosts())

    def own_reflexive(self) -> tuple[str, ...]:
        """Our reflexive address as our primary supernode saw it (AttachOk), if attached.
        (Not the UDP mappings: any binding supernode could claim we are on loopback.)"""
        ok = self.attachment.attach_ok()
        return (ok.reflexive_host,) if ok is not None else ()

    def _dialable(self, remote: Candidates, slog: FilteringBoundLogger) -> Candidates:
        """``remote`` without the candidates :mod:`.candidate_policy` says not to dial."""
        own = self.own_reflexive()
        peer = remote.public_hosts()
        tcp, dropped_tcp = candidate_policy.select(remote.tcp, own, peer)
        udp, dropped_udp = candidate_policy.select(remote.udp, own, peer)
        for kind, dropped in (("tcp", dropped_tcp), ("udp", dropped_udp)):
            for (host, port), reason in dropped:
                slog.info("candidate_dropped", kind=kind, host=host, port=port, reason=reason)
        return replace(remote, tcp=tcp, udp=udp)

    def attempts(self, s: Session, local: Candidates, remote: Candidates, shared: bytes,
                  transcript: bytes) -> dict[str, Attempt]:
        attempts: dict[str, Attempt] = {}
        remote = self._dialable(remote, log.bind(session=s.session_id.hex(), peer=s.peer_user))
        own, peer = self.own_reflexive(), remote.public_hosts()

        def dialer(host: str, port: int) -> Attempt:
            # the caller writes first where the callee takes it and its listener is known
            # to be there: its bytes leave with the connection, a round trip sooner
            first = s.tcp_first and direct_paths.known_listener(remote, (host, port), own)

            async def dial() -> MediaStream:
                return await dial_tcp(host, port, s.session_id, caller_first=first)
            return dial

        mapped = set(remote.mapped_tcp)
        for i, (host, port) in enumerate(dict.fromkeys(remote.tcp)):
            kind = "tcp-dial-mapped" if (host, port) in mapped else \
                "tcp-dial-lan" if candidate_policy.on_shared_lan(host, own, peer) else "tcp-dial"
            attempts[f"{kind}-{i}"] = dialer(host, port)
        queue = self.listener.expect(s.session_id, caller_first=not s.initiator)

        async def accept() -> MediaStream:
            # the peer dials as soon as it has the offer; after its connect timeout (plus
            # the signalling delay) nothing more will come this way
            try:
                async with asyncio.timeout(ACCEPT_WINDOW_S):
                    stream = await queue.get()
            except TimeoutError:
                raise PathLost("the peer's direct TCP connection did not arrive") from None
            peername = stream.writer.get_extra_info("peername")
            s.accepted_from = str(peername[0]) if peername else None
            return stream

        attempts["tcp-accept"] = accept
        if self.udp is not None:
            punch = transport_hooks.udp_attempt(self.udp, s.session_id, s.initiator, local,
                                                remote, shared, transcript,
                                                zero_rtt=s.zero_rtt)
            if punch is not None:
                attempts[punch[0]] = punch[1]
        udp_tried = any(name.startswith("udp-") for name in attempts)
        attempts.update(self._tcp_punch_attempts(s, local, remote, udp_tried))
        return attempts

    def _tcp_punch_attempts(self, s: Session, local: Candidates, remote: Candidates,
                            udp_punch_tried: bool) -> dict[str, Attempt]:
        """TCP hole punching from our listener's port (``remote``: its dialable candidates),
        where :func:`.tcp_punch.plan` says it may work."""
        plan = tcp_punch.plan(local, remote, candidate_policy.public_of(self.own_reflexive()),
                              udp_punch_tried)
        log.info("tcp_punch_plan", session=s.session_id.hex(), reason=plan.reason,
                 targets=[f"{h}:{p}" for h, p in plan.targets], delay_s=plan.delay_s)
        return punch_attempts(plan, self.listener.port, s.session_id,
                              sends_first=s.tcp_first, takes_first=not s.initiator)

    def plan(self, local: Candidates, remote: Candidates, attempts: dict[str, Attempt],
             slog: FilteringBoundLogger, upgrade: bool = False,
             udp_first: bool = False) -> direct_paths.RacePlan:
        """When each kind of attempt starts for this pair (the defaults, changed where
        :mod:`.direct_paths` says), how long a late direct path is preferred to a relay, and
        (``upgrade``: the path's user can move) how long one may take over from a relay (and,
        ``udp_first``, from a punched UDP path started at once)."""
        plan = direct_paths.plan(
            local, remote, direct_paths.one_network(self.own_reflexive(), remote), upgrade,
            udp_first)
        if plan.staggers:
            slog.info("race_plan", local_nat=local.nat, remote_nat=remote.nat,
                      staggers=plan.staggers, prefer_direct_s=plan.prefer_direct_s,
                      upgrade_s=plan.upgrade_s, from_udp=plan.from_udp)
        staggers = {**default_staggers(attempts), **plan.staggers}
        return replace(plan, staggers=call_relays.call_staggers(staggers, attempts))

    def securer(self, s: Session, shared: bytes, transcript: bytes) -> Securer:
        async def secure(raw: MediaStream) -> MediaStream:
            return await transport_hooks.secure(raw, shared, transcript, s.initiator,
                                                s.invite_salt)
        return secure


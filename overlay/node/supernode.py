"""Supernodes: public DHT nodes that clients behind NAT attach to over outbound TCP.

A supernode is a :class:`~overlay.node.daemon.NodeDaemon` plus these parts, wired here:

- :mod:`~overlay.node.admission`: admits clients up to ``max_clients`` (then refuses with
  alternatives) and keeps each attached client's signed presence record published;
- :mod:`~overlay.node.signal_forwarding`: routes attached clients' signals to the receiver's
  supernode (DHT method ``signal``), and delivers only what passes
  :mod:`~overlay.node.signal_gate` (a directory supernode, a signed invite, the name's key,
  the rate limits of ``SupernodeOptions.signals``);
- :mod:`~overlay.node.reachability`: dial-back checks, and the DHT method ``binding``;
- :mod:`~overlay.node.record_publisher`: its own signed record (address, load, capacity,
  relay capacity and spare rate, coordinate) in the supernode directory;
- :mod:`~overlay.node.coordinates`: its Vivaldi coordinate (:mod:`overlay.core.vivaldi`);
- :mod:`~overlay.node.metrics`: what ``/metrics`` adds for a supernode.

It relays (:mod:`overlay.relay`) within its budget (``SupernodeOptions.relay``), and tells
its clients to move when it shuts down.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from overlay.attach import (
    Attach,
    Detach,
    Message,
    Moving,
    ReachabilityRequest,
    RelayReserve,
    RelayReserved,
    Signal,
)
from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.vivaldi import CoordinateKeeper
from overlay.node.admission import Admission
from overlay.node.coordinates import CoordinateUpkeep
from overlay.node.daemon import NodeDaemon, NodeOptions
from overlay.node.http_api import ExtraMetrics
from overlay.node.metrics import supernode_metrics
from overlay.node.reachability import ReachabilityChecker, answer_binding
from overlay.node.record_publisher import RecordPublisher
from overlay.node.signal_forwarding import SignalForwarder
from overlay.node.supernode_options import SupernodeOptions
from overlay.node.tcp_service import AttachHandler, ServedSession
from overlay.relay.admission import RESERVATION_TTL_S
from overlay.relay.datagram import DatagramRelay
from overlay.relay.datagram_io import DatagramRelayEndpoint, start_datagram_relay
from overlay.relay.server import RelayServer

__all__ = ["Supernode", "SupernodeOptions"]

log = get_logger(__name__)


class Supernode(NodeDaemon, AttachHandler):
    """The TCP service's attachment traffic goes to :attr:`admission`, and its other
    messages to :attr:`reachability` and :attr:`signals`."""

    role = "supernode"

    def __init__(
        self,
        opts: NodeOptions,
        sn: SupernodeOptions | None = None,
        identity: Identity | None = None,
    ) -> None:
        sn = sn or SupernodeOptions()
        relay = RelayServer(sn.relay, idle_timeout_s=sn.relay_idle_timeout_s)
        # the TCP service only keeps its handler (self) until connections arrive after start()
        super().__init__(opts, identity, attach_handler=self, relay=relay)
        self.sn = sn
        self.relay = relay
        relay.node_key = self.identity.public_key  # what a voucher must name
        #: the datagram relay for calls: the same admission, budget and node key
        self.datagram_relay = DatagramRelay(sn.relay, relay.budget, relay.admission,
                                            node_key=relay.node_key,
                                            idle_timeout_s=sn.relay_idle_timeout_s)
        self._datagram_endpoint: DatagramRelayEndpoint | None = None
        self.vivaldi = CoordinateKeeper()
        self.tcp.coordinate = lambda: self.vivaldi.coord
        key = self.identity.public_key
        self.admission = Admission(key, self.dht, self.tcp, max_clients=sn.max_clients,
                                   advertised=lambda: self.advertised, stopping=self.stopping)
        self.publisher = RecordPublisher(
            self.identity, self.dht, sn, relay=relay, vivaldi=self.vivaldi,
            load=lambda: len(self.admission.attached), advertised=lambda: self.advertised,
            stopping=self.stopping, relay_udp_port=self._advertised_relay_udp_port,
        )
        relay.on_change = self.publisher.relay_changed
        self.datagram_relay.on_change = self.publisher.relay_changed
        self.coordinates = CoordinateUpkeep(key, self.dht, self.tcp, sn, vivaldi=self.vivaldi,
                                            publisher=self.publisher)
        self.reachability = ReachabilityChecker(self.identity, self.dht, self.tcp)
        self.signals = SignalForwarder(key, self.dht, self.tcp, self.admission, sn.signals)

    @property
    def attached(self) -> dict[tuple[str, str], ServedSession]:
        """The attached clients' sessions by (user, device)."""
        return self.admission.attached

    @property
    def refused(self) -> Counter[str]:
        """Attachments refused, by metric label."""
        return self.admission.refused

    @property
    def record(self) -> records.SignedRecord | None:
        """The supernode's own record as last published."""
        return self.publisher.record

    # -- AttachHandler ----------------------------------------------------------------------

    def accepting(self) -> bool:
        return self.admission.accepting()

    def load_permille(self) -> int:
        return self.admission.load_permille()

    async def on_attach(self, session: ServedSession, msg: Attach) -> None:
        await self.admission.on_attach(session, msg)

    async def on_detach(self, session: ServedSession, msg: Detach) -> None:
        await self.admission.on_detach(session, msg)

    async def on_message(self, session: ServedSession, msg: Message) -> None:
        if isinstance(msg, ReachabilityRequest):
            await self.reachability.check(session, msg)
        elif isinstance(msg, Signal):
            await self.signals.forward(session, msg)
        elif isinstance(msg, RelayReserve):
            self.reserve_relay(session, msg)

    def reserve_relay(self, session: ServedSession, msg: RelayReserve) -> None:
        """A relay reservation, only for a client attached here (its proven identity key is
        what the reservation counts against)."""
        assert session.result is not None
        if session.attached is None:
            reason: str | None = "not attached"
            self.relay.stats.refused["not attached"] += 1
        else:
            reason = self.relay.reserve(msg.token_hash, session.result.client_key)
        session.bind(log).info("relay_reserve", ok=reason is None, reason=reason)
        session.proto.send(RelayReserved(msg.request_id, reason is None, reason or "",
                                         RESERVATION_TTL_S if reason is None else 0.0))

    def on_closed(self, session: ServedSession) -> None:
        self.admission.on_closed(session)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.dht.register("binding", answer_binding)
        self.dht.register("signal", self.signals.answer_signal)
        await super().start()
        if self.sn.relay_udp_port is not None and self.sn.relay.enabled:
            self._datagram_endpoint = await start_datagram_relay(
                self.datagram_relay, self.opts.listen[0], self.sn.relay_udp_port,
                fast_path=self.sn.relay_udp_fast_path)
        await self.publisher.publish()
        self._tasks.append(asyncio.create_task(self.publisher.keep()))
        self._tasks.append(asyncio.create_task(self.signals.keep_directory()))
        if self.sn.vivaldi_interval_s > 0:
            self._tasks.append(asyncio.create_task(self.coordinates.keep()))
        log.info("supernode_ready", address="{}:{}".format(*self.advertised),
                 max_clients=self.sn.max_clients)

    async def stop(self) -> None:
        self.stopping.set()
        self.publisher.stop()
        self.signals.stop()
        alternatives = await self.tcp.alternatives(exclude=self.identity.public_key)
        for session in list(self.attached.values()):
            session.proto.send(Moving("supernode shutting down", alternatives))
            session.proto.close("supernode shutting down")
        if self._datagram_endpoint is not None:
            self._datagram_endpoint.close()
            self._datagram_endpoint = None
        await super().stop()

    def _advertised_relay_udp_port(self) -> int:
        """The datagram relay's port for the record (0: not running)."""
        return self.relay_udp_address[1] if self._datagram_endpoint is not None else 0

    @property
    def relay_udp_address(self) -> tuple[str, int]:
        """Where the datagram relay listens (it must be running)."""
        assert self._datagram_endpoint is not None
        return self._datagram_endpoint.address

    def extra_metrics(self) -> ExtraMetrics | None:
        return supernode_metrics(self.admission, self.tcp, self.relay, self.signals.stats,
                                 self.datagram_relay)

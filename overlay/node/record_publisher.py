"""The supernode's own signed record in the DHT's supernode directory.

The record carries the supernode's address, load (attached clients) and capacity, its relay
capacity and spare relay rate, the UDP port of its datagram relay for calls (when it runs one),
and its Vivaldi coordinate. It is re-signed every
``record_refresh_s`` (lifetime: three periods), and soon after relay sessions start or end
when the spare rate changed (coalesced: at most once per ``relay_republish_min_s``). The
directory's holders list it once they dialled the advertised address back and this node's TCP
service proved the key there (:mod:`overlay.dht.directory`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.seq_state import SeqCounter
from overlay.core.vivaldi import CoordinateKeeper
from overlay.dht import DHTNode, PutFailed
from overlay.node.supernode_options import SupernodeOptions
from overlay.relay.server import RelayServer

log = get_logger(__name__)


def relay_capacity(relay: RelayServer) -> tuple[int, int]:
    """(capacity, spare) in bits/s as the record advertises them: B and B - reserved."""
    capacity = relay.config.total_bps if relay.config.enabled else 0
    return capacity, min(capacity, relay.budget.spare_bps)


class RecordPublisher:
    def __init__(
        self,
        identity: Identity,
        dht: DHTNode,
        sn: SupernodeOptions,
        *,
        relay: RelayServer,
        vivaldi: CoordinateKeeper,
        load: Callable[[], int],
        advertised: Callable[[], tuple[str, int]],
        stopping: asyncio.Event,
        relay_udp_port: Callable[[], int] = lambda: 0,
    ) -> None:
        self.identity = identity
        self.dht = dht
        self.sn = sn
        self.relay = relay
        self.vivaldi = vivaldi
        self.load = load
        self.advertised = advertised
        self.stopping = stopping
        #: the datagram relay's UDP port (0: none), advertised in the record
        self.relay_udp_port = relay_udp_port
        #: the record last published (None before the first)
        self.record: records.SignedRecord | None = None
        #: the coordinate and spare relay rate the last record carried
        self.published_coord = vivaldi.coord
        self.published_spare: int | None = None
        self._seq = SeqCounter()
        self._last_publish = float("-inf")
        self._republish: asyncio.Task[None] | None = None

    async def publish(self) -> None:
        """Sign a new record from the current figures and store it."""
        seq = self._seq.next()
        self._last_publish = time.monotonic()
        host, port = self.advertised()
        capacity, spare = relay_capacity(self.relay)
        self.published_spare = spare
        self.published_coord = self.vivaldi.coord
        self.record = records.supernode(
            self.identity, host, port, seq=seq,
            relay_capacity_bps=capacity,
            relay_spare_bps=spare,
            load=self.load(), max_clients=self.sn.max_clients,
            coords=self.published_coord.to_record(),
            relay_udp_port=self.relay_udp_port(),
            lifetime_s=3 * self.sn.record_refresh_s,
        )
        try:
            await self.dht.put(self.record)
        except PutFailed as exc:
            log.warning("supernode_record_not_stored", error=str(exc))

    async def keep(self) -> None:
        """Re-publish every ``record_refresh_s``, forever."""
        while True:
            await asyncio.sleep(self.sn.record_refresh_s)
            try:
                await self.publish()
            except Exception:
                log.exception("supernode_record_refresh_failed")

    def relay_changed(self) -> None:
        """Relay sessions started or ended: re-publish the record soon (coalesced)."""
        if self._republish is not None or self.stopping.is_set() or self.record is None:
            return
        self._republish = asyncio.create_task(self._republish_relay())

    async def _republish_relay(self) -> None:
        try:
            wait = self._last_publish + self.sn.relay_republish_min_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if relay_capacity(self.relay)[1] != self.published_spare:
                await self.publish()
        except Exception:
            log.exception("supernode_record_refresh_failed")
        finally:
            self._republish = None
        # sessions may have changed while publishing
        if relay_capacity(self.relay)[1] != self.published_spare:
            self.relay_changed()

    def stop(self) -> None:
        """Cancel a pending relay re-publication."""
        if self._republish is not None:
            self._republish.cancel()

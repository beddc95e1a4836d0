"""The supernode's network coordinate (:mod:`overlay.core.vivaldi`).

Every ``vivaldi_interval_s`` (jittered) it times a DHT round trip (method ``binding``) to a
few other supernodes from the directory whose records carry coordinates, moves its own, and
re-publishes its record early when the coordinate moved far (or its error dropped a lot), so
a caller can estimate the relay-to-callee leg without probing.
"""

from __future__ import annotations

import asyncio
import random
import time

from overlay.core import records
from overlay.core.identity import node_id_for
from overlay.core.logs import get_logger
from overlay.core.vivaldi import Coordinate, CoordinateKeeper, moved
from overlay.dht import DHTNode
from overlay.node.record_publisher import RecordPublisher
from overlay.node.supernode_options import SupernodeOptions
from overlay.node.tcp_service import TcpService

log = get_logger(__name__)

#: an early re-publication when the coordinate's error dropped by this much since the record
ERROR_DROP_REPUBLISH = 0.25


class CoordinateUpkeep:
    def __init__(
        self,
        own_key: bytes,
        dht: DHTNode,
        tcp: TcpService,
        sn: SupernodeOptions,
        *,
        vivaldi: CoordinateKeeper,
        publisher: RecordPublisher,
    ) -> None:
        self.own_key = own_key
        self.dht = dht
        self.tcp = tcp
        self.sn = sn
        self.vivaldi = vivaldi
        self.publisher = publisher

    async def keep(self) -> None:
        """A round about every ``vivaldi_interval_s``, forever."""
        rng = random.Random()
        while True:
            await asyncio.sleep(self.sn.vivaldi_interval_s * rng.uniform(0.5, 1.0))
            try:
                await self.round()
            except Exception:
                log.exception("vivaldi_round_failed")

    async def round(self) -> int:
        """Time a DHT round trip to a few supernodes whose coordinates are known, move ours,
        and re-publish the record when it moved far; returns the number of samples taken."""
        peers: dict[bytes, tuple[records.SupernodeRecord, Coordinate]] = {}
        for signed in await self.tcp.directory():
            r = signed.record
            if isinstance(r, records.SupernodeRecord) and r.node_key != self.own_key:
                coord = Coordinate.from_record(r.coords)
                if coord is not None and r.node_key not in peers:
                    peers[r.node_key] = (r, coord)
        chosen = self.vivaldi.pick(list(peers), self.sn.vivaldi_peers_per_round)
        samples = 0
        for key in chosen:
            rec, coord = peers[key]
            started = time.monotonic()
            try:
                await self.dht.call((rec.host, rec.port), "binding", node_id=node_id_for(key))
            except (TimeoutError, OSError) as exc:
                log.bind(peer=key.hex()[:16]).debug("vivaldi_peer_silent", error=str(exc))
                continue
            self.vivaldi.observe(key, coord, time.monotonic() - started)
            samples += 1
        now, then = self.vivaldi.coord, self.publisher.published_coord
        if (moved(now, then) > self.sn.vivaldi_republish_moved_s
                or then.error - now.error > ERROR_DROP_REPUBLISH):  # early rounds learn a lot
            await self.publisher.publish()
        return samples

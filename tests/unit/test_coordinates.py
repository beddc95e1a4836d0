"""Supernodes keep Vivaldi coordinates in their signed records, from real DHT round trips."""

from __future__ import annotations

import time

from overlay.attach.adapter import ClientSession
from overlay.core import records
from overlay.core.identity import Identity, node_id_for
from overlay.core.vivaldi import UNSETTLED_ERROR, for_prediction
from overlay.media import relay_selector
from overlay.node.daemon import NodeDaemon, NodeOptions
from overlay.node.supernode import Supernode, SupernodeOptions
from overlay.relay.budget import BudgetConfig
from tests.helpers.netutil import loopback_ips, wait_for

PORT = 4300
MBIT = 1_000_000


async def test_supernodes_publish_coordinates_that_predict_their_round_trips() -> None:
    ips = loopback_ips(4)
    boot = NodeDaemon(NodeOptions(listen=(ips[0], PORT)))
    await boot.start()
    nodes = [Supernode(NodeOptions(listen=(ip, PORT), bootstrap=[(ips[0], PORT)]),
                       SupernodeOptions(vivaldi_interval_s=0.05,
                                        relay=BudgetConfig(total_bps=4 * MBIT)))
             for ip in ips[1:]]
    try:
        # a fresh coordinate says "I know nothing yet" (error 1.0): not used for predictions
        assert for_prediction(nodes[0].vivaldi.coord.to_record()) is None
        for node in nodes:
            await node.start()

        def settled() -> bool:
            for n in nodes:
                assert n.record is not None
                rec = n.record.record
                assert isinstance(rec, records.SupernodeRecord)
                if len(rec.coords) != 4 or rec.coords[3] >= UNSETTLED_ERROR:
                    return False
            return True

        await wait_for(settled, timeout=30)

        # what a client reads from the directory carries the coordinates, signed
        session = await ClientSession.connect(ips[1], PORT, Identity.generate(),
                                              expected_node_key=None, lookup_only=True)
        try:
            nodes[0].tcp._directory = (0.0, [])  # no cached directory
            found = await session.directory()
        finally:
            session.close("done")
        newest: dict[bytes, records.SupernodeRecord] = {}
        for signed in found:
            rec = signed.record
            if isinstance(rec, records.SupernodeRecord) and (
                    rec.node_key not in newest or rec.seq > newest[rec.node_key].seq):
                newest[rec.node_key] = rec
        assert set(newest) == {n.identity.public_key for n in nodes}
        coords = {k: for_prediction(r.coords) for k, r in newest.items()}
        assert all(c is not None for c in coords.values())
        # the relay selector gets them as candidates' coordinates
        assert all(c.coords is not None for c in relay_selector.candidates(found, MBIT))

        # predictions match measured round trips on loopback (well under a few milliseconds)
        a, b = nodes[0], nodes[1]
        ca, cb = coords[a.identity.public_key], coords[b.identity.public_key]
        assert ca is not None and cb is not None
        rtts = []
        for _ in range(5):
            started = time.monotonic()
            await a.dht.call((ips[2], PORT), "binding",
                             node_id=node_id_for(b.identity.public_key))
            rtts.append(time.monotonic() - started)
        predicted = ca.distance(cb)
        assert 0 < predicted < 0.02, predicted
        assert abs(predicted - min(rtts)) < 0.01, (predicted, rtts)
    finally:
        for node in nodes:
            await node.stop()
        await boot.stop()

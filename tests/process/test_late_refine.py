"""The late refine (overlay.client.late_refine), in process with real supernodes and sockets:
a client that attached to a far supernode (its probes at join time said it was nearer) moves
to the nearer one once probes say so, make-before-break, and stays there.

Probes are replaced by a table of RTTs (as in the FULL-refusal test in test_client_daemon.py):
loopback has no distance. Everything else is real: sessions, attachments, the DHT.
"""

from __future__ import annotations

from overlay.attach import SessionConfig
from overlay.attach.adapter import ClientSession, ProbeResult, SessionError
from overlay.client import discovery as client_discovery
from overlay.client.daemon import ClientDaemon
from overlay.client.late_refine import LateRefinePolicy
from overlay.client.options import ClientOptions
from overlay.core import records
from overlay.core.identity import Identity
from overlay.node.daemon import NodeDaemon, NodeOptions
from overlay.node.supernode import Supernode
from overlay.node.tcp_service import ServiceLimits
from tests.helpers.netutil import loopback_ips, wait_for

PORT = 4000


async def presence_host(via: str, user: str) -> str | None:
    """The supernode host the newest online presence record of ``user`` names."""
    try:
        session = await ClientSession.connect(via, PORT, Identity.generate(),
                                              expected_node_key=None, lookup_only=True)
    except SessionError:
        return None
    try:
        found = await session.lookup(user)
    except SessionError:
        return None
    finally:
        session.close()
    online = [s.record for s in found
              if isinstance(s.record, records.PresenceRecord) and s.record.online]
    if not online:
        return None
    newest = max(online, key=lambda r: r.seq)
    return newest.supernode_host


async def test_client_moves_to_a_nearer_supernode_make_before_break(tmp_path, monkeypatch):
    boot_ip, far_ip, near_ip = loopback_ips(3)
    limits = ServiceLimits(session=SessionConfig(heartbeat_interval_s=1))
    boot = NodeDaemon(NodeOptions(listen=(boot_ip, PORT), limits=limits))
    far = Supernode(NodeOptions(listen=(far_ip, PORT), bootstrap=[(boot_ip, PORT)],
                                limits=limits))
    near = Supernode(NodeOptions(listen=(near_ip, PORT), bootstrap=[(boot_ip, PORT)],
                                 limits=limits))
    rtts = {far_ip: 0.005, near_ip: 0.040}  # at join time the far one looks nearer

    async def table_probe(host: str, port: int, identity: Identity, *, timeout: float = 2.0,
                          count: int = 2) -> ProbeResult:
        return ProbeResult(host, port, rtts[host], True, 0)

    daemon: ClientDaemon | None = None
    try:
        for node in (boot, far, near):
            await node.start()

        async def both_listed() -> bool:
            return all([await directory_has(ip, 2) for ip in (boot_ip, far_ip)])

        await wait_for(both_listed, timeout=20, interval=0.2)
        monkeypatch.setattr(client_discovery, "probe", table_probe)
        daemon = ClientDaemon(ClientOptions(
            user="erin", key_path=tmp_path / "erin.key", bootstrap=[(boot_ip, PORT)],
            device="phone", heartbeat_s=1,
            late_refine=LateRefinePolicy(delay_s=1.0, jitter_s=0.5)))
        await daemon.start()
        await wait_for(lambda: daemon is not None and daemon.attached.is_set(), timeout=15)
        assert daemon.status()["supernode"]["host"] == far_ip
        assert len(far.attached) == 1

        rtts.update({far_ip: 0.040, near_ip: 0.005})  # the truth, seen by the late refine
        await wait_for(lambda: len(near.attached) == 1 and not far.attached, timeout=15)
        supervisor = daemon.supervisor
        assert daemon.status()["supernode"]["host"] == near_ip
        assert supervisor.late_moves == 1 and supervisor.failovers == 0

        async def names_near() -> bool:
            return await presence_host(boot_ip, "erin") == near_ip

        await wait_for(names_near, timeout=10, interval=0.2)

        # the next late refine runs on the new attachment: the far one was left, probes now
        # favour it a little, and the client stays where it is
        rtts.update({far_ip: 0.004})
        attached_since = daemon.links.primary.since if daemon.links.primary else None

        await wait_for(lambda: supervisor.late_refines >= 2, timeout=10, interval=0.1)
        assert daemon.links.primary is not None
        assert daemon.links.primary.since == attached_since
        assert supervisor.late_moves == 1 and len(near.attached) == 1
        await daemon.stop()
        daemon = None
        assert not near.attached
    finally:
        if daemon is not None:
            await daemon.stop()
        for node in (near, far, boot):
            await node.stop()


async def directory_has(host: str, n: int) -> bool:
    try:
        session = await ClientSession.connect(host, PORT, Identity.generate(),
                                              expected_node_key=None, lookup_only=True)
    except SessionError:
        return False
    try:
        return len(await session.directory()) >= n
    except SessionError:
        return False
    finally:
        session.close()

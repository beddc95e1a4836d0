"""Operators' HTTP endpoints on bootstrap nodes and supernodes."""

from __future__ import annotations

import base64

from overlay.attach.adapter import ClientSession
from overlay.core import records
from overlay.core.identity import Identity
from tests.helpers.daemons import Daemon, http_get, http_text, wait_ready
from tests.helpers.netutil import loopback_ips, wait_for
from tests.helpers.node_keys import key_args


async def test_readyz_waits_for_join_then_users_and_metrics_are_served(tmp_path):
    boot_ip, sn_ip = loopback_ips(2)
    supernode = Daemon(["supernode", "--listen", f"{sn_ip}:4000", "--http", f"{sn_ip}:8080",
                        "--bootstrap", f"{boot_ip}:4000", *key_args(tmp_path, "sn")],
                       tmp_path / "sn.log").start()
    boot = Daemon(["bootstrap", "--listen", f"{boot_ip}:4000", "--http", f"{boot_ip}:8080",
                   *key_args(tmp_path, "boot")], tmp_path / "boot.log")
    try:
        async def serving_not_ready() -> bool:
            status, body = await http_get(f"http://{sn_ip}:8080/readyz")
            return status == 503 and body == {"status": "joining"}

        await wait_for(serving_not_ready, timeout=15)
        assert (await http_get(f"http://{sn_ip}:8080/healthz"))[0] == 200
        boot.start()
        await wait_ready(f"{sn_ip}:8080", supernode, timeout=30)

        session = await ClientSession.connect(boot_ip, 4000, Identity.generate(),
                                              expected_node_key=None, lookup_only=True)
        (sn_record,) = await session.directory()
        key = sn_record.record.node_key
        alice = Identity.generate()
        attached = await ClientSession.connect(sn_ip, 4000, alice, expected_node_key=key,
                                               user="alice", device="laptop")
        await attached.attach(records.presence(alice, "alice", "laptop", seq=1,
                                               supernode_key=key, supernode_host=sn_ip,
                                               supernode_port=4000))
        for http in (f"{sn_ip}:8080", f"{boot_ip}:8080"):
            status, body = await http_get(f"http://{http}/v1/users/alice")
            assert status == 200
            (rec,) = body["records"]
            assert rec["user"] == "alice" and rec["online"] is True
            assert rec["public_key"] == alice.public_id
            assert rec["supernode"] == f"{sn_ip}:4000"
            assert records.verify(base64.b64decode(rec["signed"])).record.user == "alice"
        assert (await http_get(f"http://{sn_ip}:8080/v1/users/Not..Valid"))[0] == 400
        assert (await http_get(f"http://{sn_ip}:8080/v1/users/nobody"))[1]["records"] == []
        metrics = await http_text(f"http://{sn_ip}:8080/metrics")
        for name in ("overlay_attached_clients 1.0", "overlay_records_stored",
                     'overlay_dht_rpcs_total{direction="in"', "overlay_records_rejected_total",
                     "overlay_dht_contacts"):
            assert name in metrics, name

        async def boot_verified_the_supernode() -> bool:
            """The bootstrap node lists the supernode's record once its dial-back proved it."""
            text = await http_text(f"http://{boot_ip}:8080/metrics")
            return ('overlay_directory_records{state="listed"} 1.0' in text
                    and 'overlay_directory_dial_backs_total{outcome="verified"} 1.0' in text)

        await wait_for(boot_verified_the_supernode, timeout=10)
        attached.close()
        session.close()
    finally:
        supernode.kill()
        boot.kill()

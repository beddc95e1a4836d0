"""A supernode whose host falls silent (power cut, cable pulled: no FIN, no RST) loses its
clients to their backups within seconds: the client's kernel TCP keepalive notices it
(overlay/attach/tcp_keepalive). The daemons run the default 30 s heartbeats here, with which
a silent supernode was noticed only after three missed heartbeats (90 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.lab_overlay import LabOverlay, lab_available
from tests.helpers.netutil import wait_until

ok, why = lab_available()
if not ok:
    pytest.skip(why, allow_module_level=True)

#: the daemons' heartbeat: as in production, so heartbeats cannot be what notices
HEARTBEAT_S = 30.0
#: keepalive gives up 6 s after the last traffic; a warm backup takes over at once (after up
#: to 2 s of failover jitter): well inside this, and far from the 90 s heartbeats need
FAILOVER_DEADLINE_S = 30.0

#: nft rules that make a host vanish: nothing in, nothing out (no RST, no ICMP)
SILENCE = """table inet silence {
  chain in { type filter hook input priority -300; policy drop; }
  chain out { type filter hook output priority -300; policy drop; }
}
"""


def test_a_silent_supernode_loses_its_client_to_the_backup(tmp_path: Path) -> None:
    with LabOverlay(tmp_path, {"c1": "cone"}, heartbeat_s=HEARTBEAT_S) as ov:
        ov.wait_attached(timeout=60, lookups=False)
        addresses = {ov.supernode_addr(sn): sn for sn in ov.supernode_hosts}

        def primary_and_backup() -> tuple[str, str] | None:
            status = ov.status("c1")
            primary = (status.get("supernode") or {}).get("address")
            backup = (status.get("backup") or {}).get("address")
            if primary in addresses and backup in addresses and primary != backup:
                return str(primary), str(backup)
            return None

        primary, backup = wait_until(primary_and_backup, 60, "an attachment and a backup")
        assert ov.lab is not None
        ov.lab.run(addresses[primary], ["nft", "-f", "-"], input=SILENCE, check=True)

        def on_the_backup() -> bool:
            return ov.attached_to("c1") == backup and ov.status("c1").get("state") == "attached"

        wait_until(on_the_backup, FAILOVER_DEADLINE_S,
                   f"c1 attached to its backup {backup} after {primary} fell silent")

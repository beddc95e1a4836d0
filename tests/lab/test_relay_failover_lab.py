"""Kill the relay mid-transfer (SIGKILL): the transfer finishes through another relay, resumed
from the receiver's offset, with the right sha256. One client behind a symmetric NAT, the
other behind a TCP-only NAT, so a relay is the only path (two TCP-only sides punch TCP, a
symmetric and an easy side punch UDP); three supernodes, so two relays remain."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.helpers.lab_overlay import LabOverlay, lab_available, sha256_file
from tests.helpers.netutil import wait_until

ok, why = lab_available()
if not ok:
    pytest.skip(why, allow_module_level=True)


def test_transfer_survives_its_relay_being_killed(tmp_path):
    clients = {"t1": "symmetric", "t2": "tcp-only"}
    with LabOverlay(tmp_path, clients, supernodes=3) as ov:
        src = ov.outbox("t1") / "big.bin"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(os.urandom(3 * 2**19))  # ~12 s at the default 1 Mbit/s session cap
        result = {}
        sender = threading.Thread(target=lambda: result.update(res=ov.send("t1", "t2", src,
                                                                            timeout=240)))
        sender.start()

        def bytes_moving() -> bool:
            sending = ov.status("t1").get("sending") or []
            return any(item.get("sent", 0) > 2**18 for item in sending)

        wait_until(bytes_moving, 60, "the transfer under way")

        def relay_in_use() -> str | None:
            """The relay carrying the transfer: a paired session that has not ended (the
            other relays asked in parallel paired too, but lost the race and closed)."""
            for sn in ov.supernode_hosts:
                log = ov.log_path(sn).read_text(errors="replace")
                if log.count('"relay_paired"') > log.count('"relay_session_ended"'):
                    return sn
            return None

        relay = wait_until(relay_in_use, 10, "the relay carrying the transfer")
        ov.stop_daemon(str(relay), sig=signal.SIGKILL)
        sender.join(timeout=260)
        res = result["res"]
        assert res.ok, res.describe()
        assert res.json is not None and res.json["path"] == "relay"
        assert res.json["sha256"] == sha256_file(src)
        assert sha256_file(ov.inbox("t2") / "big.bin") == sha256_file(src)
        relay_key_prefix = res.json["relay"]
        killed_log = ov.log_path(str(relay)).read_text(errors="replace")
        assert relay_key_prefix not in killed_log  # finished through another relay
        assert not [p for p in ov.inbox("t2").iterdir() if p.name.endswith(".partial")]
        sender_log = ov.log_path("t1").read_text(errors="replace")
        assert '"transfer_path_lost"' in sender_log  # it really failed over, and resumed
        print(next(line for line in sender_log.splitlines() if "transfer_path_lost" in line))

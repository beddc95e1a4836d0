"""A 0-RTT path that fails after it was selected (issue 13), in the NAT lab.

A file's caller selects its punched UDP path as soon as its first QUIC flight is out, before
the callee has confirmed anything (``udp-punch: 0-RTT sent``). Here the callee's host drops
every UDP datagram over 1,100 bytes, as a path with a broken MTU does: the small punch probes
get through, the QUIC Initial (at least 1,200 bytes) never does. The speculative path then
fails under the transfer within the QUIC connect timeout; the send must resume in a new
session, without 0-RTT, on a path that works, and deliver the file intact, saying which path
carried it (no silent failure, no byte lost)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.lab_overlay import LabOverlay, lab_available, sha256_file

_ok, _why = lab_available()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netlab

CLIENTS = {"cone-1": "cone", "cone-2": "cone"}
#: a path MTU black hole for large UDP datagrams, on the callee's own host
BIG_UDP_DROPPED = """table inet mtu_hole {
  chain in { type filter hook input priority -300; udp length > 1100 drop; }
}
"""


@pytest.mark.timeout(300)
def test_a_failed_zero_rtt_path_resumes_in_a_new_session(tmp_path: Path) -> None:
    with LabOverlay(tmp_path, CLIENTS) as ov:
        assert ov.lab is not None
        ov.lab.run("cone-2", ["nft", "-f", "-"], input=BIG_UDP_DROPPED, check=True)
        name = f"mtu-hole-{os.urandom(3).hex()}.bin"
        file = ov.make_file("cone-1", name, 256 * 1024)
        res = ov.send("cone-1", "cone-2", file, timeout=120)
        assert res.ok and res.json is not None, res.describe()
        print(f"cone-1 -> cone-2: {res.json.get('path')}/{res.json.get('technique')} in "
              f"{res.json.get('seconds')} s, resumed_from {res.json.get('resumed_from')}",
              flush=True)
        received = ov.wait_inbox_file("cone-2", name, timeout=20)
        assert sha256_file(received) == sha256_file(file)
        # the first session went 0-RTT on the punched path, and lost it
        timelines = [e.get("timeline") or [] for e in ov.log_lines(
            "cone-1", lambda e: e.get("event") == "path_selection", since=res.started_at)]
        assert any(any(ev == "udp-punch: 0-RTT sent" for _, ev in t) for t in timelines), \
            timelines
        lost = ov.log_lines("cone-1", lambda e: e.get("event") == "transfer_path_lost",
                            since=res.started_at)
        assert lost and lost[0].get("resuming") is True, lost
        print(f"  lost: {lost[0].get('error')}", flush=True)
        # the session that carried the file (the last race) did not speculate, and says
        # where it went
        assert len(timelines) >= 2, timelines
        assert not any(ev == "udp-punch: 0-RTT sent" for _, ev in timelines[-1]), timelines
        assert res.json.get("path") in ("tcp-punch", "relay"), res.json
        assert res.json.get("bytes") == 256 * 1024

"""UDP first, upgrade to TCP, in the NAT lab (issue 13), on links with 100 ms one way (no
loss, so that the outcome is the design's and not a lost packet's).

A ``cone`` client sends a file to a ``public`` one. Before, the race gave direct TCP a 0.25 s
head start, after which the punched UDP path won (TCP's dial and handshake take a round
trip longer at 400 ms RTT) and carried the whole file at QUIC's ~40 Mbit/s. Now the caller,
whose invite took a long round trip to be answered, opens its punched path with 0-RTT at
once (its first bytes ride its first QUIC flight), keeps its direct TCP dial running, and
moves the transfer to it when it completes (with at least 4 MiB left to send: the file is
8 MiB): ``overlay send --json`` reports ``direct-tcp`` with ``upgraded_from`` ``udp-punch``,
the receiver's record says the same, and the file in the inbox has the sent sha256 (no byte
lost, none written twice). Before, this send reported ``udp-punch`` and took 8.3 s; moving,
5.4 s.

The other direction (``public`` caller) is checked for delivery and the final path: there the
callee dials the caller as soon as it answers, so direct TCP may complete before the race
selects and the transfer then never moves.

A ``tcp-only`` client's send to the ``public`` one dials the callee's listener caller first
(the callee's presence lists ``media-tcp-first``, and its address is its own): the caller's
race selects its dial as soon as it connects (``tcp-dial-0: 0-RTT sent``), its first bytes
leaving with the connection. Before, it waited a round trip more for the callee's salt.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.lab_overlay import LabOverlay, lab_available, receiver_entry, sha256_file

_ok, _why = lab_available()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netlab

CLIENTS = {"cone-1": "cone", "public-1": "public", "tcp-only-1": "tcp-only"}
DELAY = {"delay_ms": 100, "loss_pct": 0}
FILE_SIZE = 8 * 2**20  # moving pays off from 4 MiB left (move_rules)


@pytest.mark.timeout(400)
def test_a_file_starts_on_zero_rtt_udp_and_moves_to_direct_tcp(tmp_path: Path) -> None:
    with LabOverlay(tmp_path, CLIENTS, netem=DELAY) as ov:
        ov.wait_attached(timeout=120)
        for src, dst in (("cone-1", "public-1"), ("public-1", "cone-1")):
            name = f"{src}-to-{dst}-{os.urandom(3).hex()}.bin"
            file = ov.make_file(src, name, FILE_SIZE)
            res = ov.send(src, dst, file, timeout=180)
            assert res.ok and res.json is not None, res.describe()
            j = res.json
            # the caller's race, as its log has it (``send --json`` does not carry it)
            events = caller_race(ov, src, res.started_at)
            print(f"{src} -> {dst}: {j.get('path')}/{j.get('technique')} upgraded_from="
                  f"{j.get('upgraded_from')} in {j.get('seconds')} s; "
                  f"{[e for e in events if 'udp-punch' in e or 'upgrade' in e]}", flush=True)
            received = ov.wait_inbox_file(dst, name, timeout=30)
            assert sha256_file(received) == sha256_file(file)
            assert j.get("path") == "direct-tcp" and j.get("bytes") == FILE_SIZE, j
            if src == "public-1":
                continue
            # the punched path went first, with 0-RTT, and the transfer moved to TCP mid-way
            assert "udp-punch: 0-RTT sent" in events and "selected udp-punch" in events, events
            assert (j.get("technique"), j.get("upgraded_from")) == ("dial", "udp-punch"), j
            entry = receiver_entry(ov, dst, src, received.name)
            assert (entry.get("path"), entry.get("upgraded_from")) == \
                ("direct-tcp", "udp-punch"), entry

        # a TCP-only caller dials the public callee caller first
        file = ov.make_file("tcp-only-1", f"tcp-first-{os.urandom(3).hex()}.bin", 2**16)
        res = ov.send("tcp-only-1", "public-1", file, timeout=120)
        assert res.ok and res.json is not None, res.describe()
        events = caller_race(ov, "tcp-only-1", res.started_at)
        print(f"tcp-only-1 -> public-1: {res.json.get('path')} {events}", flush=True)
        assert (res.json.get("path"), res.json.get("technique")) == ("direct-tcp", "dial")
        assert "tcp-dial-0: 0-RTT sent" in events and "selected tcp-dial-0" in events, events
        received = ov.wait_inbox_file("public-1", file.name, timeout=30)
        assert sha256_file(received) == sha256_file(file)


def caller_race(ov: LabOverlay, src: str, since: float) -> list[str]:
    """The events of the caller's last race, as its log has them."""
    races = ov.log_lines(src, lambda e: e.get("event") == "path_selection", since=since)
    return [e for _, e in races[-1].get("timeline") or []] if races else []

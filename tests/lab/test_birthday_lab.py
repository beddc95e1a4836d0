"""Birthday punching in the NAT lab (real nftables routers, real overlay daemons).

A ``symmetric`` router (masquerade ``random,fully-random``: a new random port per destination)
against a ``cone`` one or a ``firewalled`` host (public address, stateful filtering): simple
punching cannot work (the symmetric side's port towards the peer is unknown, and both routers
drop unsolicited packets), so without birthday punching these pairs go through a relay. With
it, ``overlay send --json`` reports ``path`` ``udp-punch`` and ``technique`` ``birthday`` in
both directions; two symmetric sides still need the relay.

Each birthday run has a ~1.7 % chance to miss (1,024 random probes against 256 open ports out
of 64,512: :func:`overlay.media.birthday.success_probability`) and then falls back to the
relay, so the test allows :data:`MAX_MISSES` misses among its birthday runs, each of which must
have logged a ``birthday_punch`` that failed or was cut short by the relay completing
first (tried and missed, not skipped). It prints one line per
run: path, technique, the probes the easy side sent, the extra sockets the hard side used, and
the punching time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lab_overlay import LabOverlay, SendResult, lab_available, sha256_file

_ok, _why = lab_available()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netlab

CLIENTS = {"sym-1": "symmetric", "sym-2": "symmetric", "cone-1": "cone", "cone-2": "cone",
           "fw-1": "firewalled", "fw-2": "firewalled"}
#: (sender, receiver): the pairs that must punch with the birthday technique. Each easy side
#: (cone/firewalled) is in one pair only, and the test waits until its router forgot the
#: previous run's spray (see :func:`wait_spray_forgotten`), so every run starts cold.
BIRTHDAY_PAIRS = [("sym-1", "cone-1"), ("cone-2", "sym-1"), ("sym-1", "fw-1"),
                  ("fw-2", "sym-1")]
#: runs per birthday pair (the figures reported for issue 13: BIRTHDAY_RUNS=10); one in CI,
#: where the connectivity matrix punches six more birthday pairs
RUNS = int(os.environ.get("BIRTHDAY_RUNS", "1"))
#: birthday runs allowed to miss (and go through the relay): 2 of 4 runs (P(more) < 0.1 % at
#: the 5.4 % per run measured in the lab, issue 13's note), 15 % of longer series
MAX_MISSES = max(2, RUNS * len(BIRTHDAY_PAIRS) * 15 // 100)
#: the easy side's router holds fewer unreplied flows to the hard side than this: no spray left
#: (one spray leaves up to 1,024 for nf_conntrack_udp_timeout, 30 s)
SPRAY_LEFTOVER = 16
#: large enough to outlast the punch on the relay, which starts at once for these pairs and
#: carries 1 Mbit/s a session (2 MiB: ~17 s; the transfer moves to the punched path, issue 13)
FILE_SIZE = 2 << 20


def punch_lines(ov: LabOverlay, host: str, res: SendResult) -> list[dict[str, Any]]:
    return ov.log_lines(host, lambda e: e.get("event") == "birthday_punch",
                        since=res.started_at)


def unreplied_flows_to(ov: LabOverlay, router_of: str, ip: str) -> int:
    """UDP flows ``router_of``'s router tracks towards ``ip`` that were never answered."""
    assert ov.lab is not None
    table = str(ov.lab.run(router_of, ["cat", "/proc/net/nf_conntrack"], router=True,
                           check=True).stdout)
    return sum(1 for line in table.splitlines()
               if " udp " in line and "[UNREPLIED]" in line and f" dst={ip} " in line)


def wait_spray_forgotten(ov: LabOverlay, easy: str, hard: str) -> None:
    """Wait until ``easy``'s router dropped the flows a previous spray at ``hard`` opened:
    they would let the next run's hard side in at once (its probes match them), which is
    real (a second session within 30 s is quick) but not what a first contact measures."""
    assert ov.lab is not None
    ip = ov.lab.public_ip(hard)
    deadline = time.monotonic() + 45
    while unreplied_flows_to(ov, easy, ip) >= SPRAY_LEFTOVER:
        assert time.monotonic() < deadline, f"{easy}'s router keeps its flows to {hard}"
        time.sleep(0.5)


def run(ov: LabOverlay, src: str, dst: str) -> tuple[SendResult, dict[str, Any], str]:
    """One transfer; its result, both sides' birthday_punch lines merged, and a report line."""
    name = f"{src}-to-{dst}-{os.urandom(3).hex()}.bin"
    file = ov.make_file(src, name, FILE_SIZE)
    res = ov.send(src, dst, file, timeout=90)
    assert res.ok and res.json is not None, res.describe()
    received = ov.wait_inbox_file(dst, name, timeout=15)
    assert sha256_file(received) == sha256_file(file)
    merged: dict[str, Any] = {}
    for host in (src, dst):
        for line in punch_lines(ov, host, res):
            merged[line["role"]] = line
    easy, hard = merged.get("easy", {}), merged.get("hard", {})
    line = (f"{src} -> {dst}: {res.json.get('path')}/{res.json.get('technique')} "
            f"punch={hard.get('outcome', '-')} in {hard.get('seconds', '-')} s, "
            f"easy probes={easy.get('spray', '-')} (all probes {easy.get('probes', '-')}), "
            f"hard sockets={hard.get('sockets', '-')} winner={hard.get('winner', '-')}, "
            f"transfer {res.json.get('seconds')} s")
    return res, merged, line


@pytest.mark.timeout(300 + RUNS * len(BIRTHDAY_PAIRS) * 45)
def test_symmetric_against_an_easy_side_punches_with_the_birthday_technique(
        tmp_path: Path) -> None:
    with LabOverlay(tmp_path, CLIENTS) as ov:
        rows: list[str] = []
        misses: list[str] = []
        birthday_runs = 0
        for _ in range(RUNS):
            for src, dst in BIRTHDAY_PAIRS:
                hard, easy = (src, dst) if src.startswith("sym") else (dst, src)
                wait_spray_forgotten(ov, easy, hard)
                res, lines, row = run(ov, src, dst)
                rows.append(row)
                print(row, flush=True)
                birthday_runs += 1
                assert res.json is not None
                assert set(lines) == {"easy", "hard"}, (row, lines)
                if (res.json.get("path"), res.json.get("technique")) == ("udp-punch",
                                                                        "birthday"):
                    assert lines["hard"]["outcome"] == "succeeded", row
                    assert lines["hard"]["sockets"] == 256, row
                    assert lines["easy"]["spray"] <= 1024, row
                    continue
                # a miss: tried, and failed within its time or was cut short by the relay
                # that completed first (it starts once the spray is out)
                assert res.json.get("path") == "relay", row
                assert lines["hard"]["outcome"] in ("failed", "cancelled"), row
                misses.append(row)

        res, lines, row = run(ov, "sym-1", "sym-2")
        rows.append(row)
        assert res.json is not None
        assert (res.json.get("path"), res.json.get("technique")) == ("relay", "relay"), row
        assert not lines, row  # two symmetric sides: no punching attempted at all
        print("\n" + "\n".join(rows))
        print(f"birthday: {birthday_runs - len(misses)}/{birthday_runs} runs punched")
        assert len(misses) <= MAX_MISSES, misses

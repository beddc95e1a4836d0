"""Hole punching, QUIC and end-to-end securing through real NATs (tools/natlab).

Each client is a ``tests/helpers/media_driver.py peer`` process inside a lab host: it asks
two binding
responders on the public segment for its reflexive address (NAT type), prints its candidates,
and gets the peer's candidates and the session secrets from this test process over its stdin,
never over the lab network. Then it punches, runs QUIC on the punched path and ``secure()`` on
top, and moves 1 MiB. Needs root, ``ip`` and ``nft``; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest

if os.geteuid() != 0:
    pytest.skip("the NAT lab needs root (network namespaces, nftables)", allow_module_level=True)
for _tool in ("ip", "nft"):
    if shutil.which(_tool) is None:
        pytest.skip(f"the NAT lab needs the {_tool!r} command", allow_module_level=True)

from tests.helpers.repo import REPO  # noqa: E402
from tools.natlab import Lab, LabProcess  # noqa: E402  (after the skip checks on purpose)

pytestmark = pytest.mark.netlab

MiB = 1 << 20
IMPAIRED = {"delay_ms": 100, "loss_pct": 2}
TOPOLOGY: dict[str, Any] = {
    "hosts": {
        "r1": {"kind": "public"},  # binding responders
        "r2": {"kind": "public"},
        "p1": {"kind": "public"},
        "fw": {"kind": "firewalled"},
        "c1": {"kind": "cone"},
        "c2": {"kind": "cone"},
        "y1": {"kind": "symmetric"},
        "y2": {"kind": "symmetric"},
        "t1": {"kind": "tcp-only"},
        "n1": {"kind": "cone", "netem": IMPAIRED},
        "n2": {"kind": "cone", "netem": IMPAIRED},
    }
}
PUNCH_TIMEOUT_S = 3.0


def driver(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.helpers.media_driver", *args]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(TOPOLOGY) as lab:
        yield lab


@pytest.fixture(scope="module")
def reflectors(lab: Lab) -> list[str]:
    """``ip:port:keyhex`` of a binding responder on each of r1 and r2."""
    out = []
    for host in ("r1", "r2"):
        proc = lab.spawn(host, driver("reflector"), cwd=REPO)
        ready = proc.read_json(20)
        assert ready["event"] == "ready", ready
        out.append(f"{lab.public_ip(host)}:{ready['port']}:{ready['key']}")
    return out


class Peer:
    def __init__(self, lab: Lab, host: str, reflectors: list[str]) -> None:
        args = [a for r in reflectors for a in ("--reflector", r)]
        self.host = host
        self.proc: LabProcess = lab.spawn(
            host, driver("peer", "--host", lab.host_ip(host), *args), cwd=REPO)
        self._candidates: dict[str, Any] | None = None

    @property
    def candidates(self) -> dict[str, Any]:
        if self._candidates is None:
            self._candidates = self.event("candidates", 20)
        return self._candidates

    def event(self, *names_and_timeout: Any) -> dict[str, Any]:
        *names, timeout = names_and_timeout
        try:
            event: dict[str, Any] = self.proc.read_json(timeout)
        except (TimeoutError, EOFError) as exc:
            raise AssertionError(f"{self.host}: {exc}\n{self.proc.stderr_text[-3000:]}") from None
        assert event["event"] in names, (self.host, event, self.proc.stderr_text[-3000:])
        return event

    def order(self, other: Peer, initiator: bool, secrets: dict[str, str], send: int) -> None:
        self.proc.write_line(json.dumps(dict(
            secrets, remote=other.candidates["candidates"], initiator=initiator, send=send,
            punch_timeout=PUNCH_TIMEOUT_S)))


def start_pair(lab: Lab, reflectors: list[str], a: str, b: str, send: int = MiB
               ) -> tuple[Peer, Peer]:
    pa, pb = Peer(lab, a, reflectors), Peer(lab, b, reflectors)
    secrets = {"session": os.urandom(16).hex(), "secret": os.urandom(32).hex(),
               "transcript": os.urandom(32).hex()}
    pa.order(pb, True, secrets, send)
    pb.order(pa, False, secrets, 0)
    return pa, pb


def finish_transfer(pa: Peer, pb: Peer, timeout: float) -> tuple[dict[str, Any], ...]:
    punched = (pa.event("punched", 10), pb.event("punched", 10))
    done = (pa.event("done", timeout), pb.event("done", timeout))
    assert done[0]["bytes"] == done[1]["bytes"] == MiB
    assert done[0]["sha256"] == done[1]["sha256"]
    return (*punched, *done)


def punch_times(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How long each side took once both were punching (the drivers start a little apart)."""
    both = max(a["started_at"], b["started_at"])
    return "/".join(f"{max(0.0, e['punched_at'] - both):.3f}" for e in (a, b)) + " s"


def test_nat_types(lab: Lab, reflectors: list[str]) -> None:
    expected = {"p1": "public", "fw": "public", "c1": "cone", "y1": "symmetric",
                "t1": "no-udp"}
    peers = {host: Peer(lab, host, reflectors) for host in expected}
    for host, nat in expected.items():
        report = peers[host].candidates
        assert report["nat"] == nat, report
        peers[host].proc.write_line("")  # no session: exit
    # what the responders saw: the router's public address for NATed hosts
    assert {tuple(m) for m in peers["c1"].candidates["mapped"]} == {
        (lab.public_ip("c1"), peers["c1"].candidates["mapped"][0][1])}
    ports = {m[1] for m in peers["y1"].candidates["mapped"]}
    assert len(ports) == 2 and {m[0] for m in peers["y1"].candidates["mapped"]} == {
        lab.public_ip("y1")}
    assert peers["t1"].candidates["mapped"] == [None, None]
    assert peers["fw"].candidates["mapped"][0] == [lab.host_ip("fw"),
                                                   peers["fw"].candidates["local"][1]]


def test_cone_to_cone_moves_one_mebibyte(lab: Lab, reflectors: list[str]) -> None:
    pa, pb = start_pair(lab, reflectors, "c1", "c2")
    punched_a, punched_b, done_a, _ = finish_transfer(pa, pb, 30)
    # each side talks to the other's public (server-reflexive) address
    assert punched_a["peer"] == [lab.public_ip("c2"), pb.candidates["mapped"][0][1]]
    assert punched_b["peer"] == [lab.public_ip("c1"), pa.candidates["mapped"][0][1]]
    print(f"\ncone<->cone: punch {punch_times(punched_a, punched_b)}, "
          f"QUIC+secure {done_a['connect_s']:.3f} s, 1 MiB {done_a['transfer_s']:.2f} s")


def test_firewalled_to_cone(lab: Lab, reflectors: list[str]) -> None:
    pa, pb = start_pair(lab, reflectors, "fw", "c1")
    punched_a, punched_b, done_a, _ = finish_transfer(pa, pb, 30)
    assert punched_b["peer"] == [lab.host_ip("fw"), pa.candidates["local"][1]]
    print(f"\nfirewalled<->cone: punch {punch_times(punched_a, punched_b)}, "
          f"1 MiB {done_a['transfer_s']:.2f} s")


def test_symmetric_pairs_fail_fast(lab: Lab, reflectors: list[str]) -> None:
    pairs = [start_pair(lab, reflectors, "y1", "y2"), start_pair(lab, reflectors, "y2", "c2")]
    for pa, pb in pairs:
        for peer in (pa, pb):
            failed = peer.event("punch_failed", PUNCH_TIMEOUT_S + 10)
            assert PUNCH_TIMEOUT_S - 0.1 <= failed["elapsed"] <= PUNCH_TIMEOUT_S + 1.0, failed


def test_impaired_cone_to_cone_moves_one_mebibyte(lab: Lab, reflectors: list[str]) -> None:
    """100 ms and 2 % loss on each direction of both uplinks: RTT 400 ms, ~4 % loss each way."""
    pa, pb = start_pair(lab, reflectors, "n1", "n2")
    punched_a, punched_b, done_a, _ = finish_transfer(pa, pb, 45)
    print(f"\nimpaired cone<->cone: punch {punch_times(punched_a, punched_b)}, "
          f"QUIC+secure {done_a['connect_s']:.3f} s, "
          f"1 MiB {done_a['transfer_s']:.2f} s")

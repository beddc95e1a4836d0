"""TCP hole punching (simultaneous open) in the NAT lab: clients behind real nftables
routers (``tools/natlab``) send each other files with ``overlay send --json``.

A ``tcp-only`` router forwards only TCP from its LAN, so UDP hole punching cannot help, and
before TCP punching every pair with a ``tcp-only`` side and a NATed or firewalled peer went
through a relay. Each side now connects from its media listener's port to the peer's
reflexive TCP candidate (:mod:`overlay.media.tcp_punch`); ``tcp-only`` and ``cone`` routers
masquerade keeping the source port, and a ``firewalled`` host has its public address, so
both outgoing SYNs open their own router for the other's and the kernels complete a
simultaneous open. :data:`PUNCHED` must report ``path`` ``tcp-punch`` and ``technique``
``simultaneous-open`` on both sides, deliver the file intact, and have the connection within
:data:`NO_RETRANSMIT_S` of the caller's race starting (the callee's SYN left first, so the
caller's passes at once: no side waits for a SYN retransmission).

A ``symmetric`` router masquerades with ``random,fully-random``: the punching SYN leaves with
a random port, not the advertised one, so the peer's SYN never matches and
``tcp-only -> symmetric`` still needs a relay (:data:`RELAYED`).

The same pairs punch again at once, also the other way round (:data:`AGAIN`): every punch
between two peers uses the same 4-tuple (listener port to listener port), so the last
connection must not have left it in TIME_WAIT (the side that closes second resets it,
:class:`overlay.media.stream.TcpByteStream`); before, the kernel refused the new punch
(``EADDRNOTAVAIL``) and the send went through a relay.
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

CLIENTS = {"tcp-only-1": "tcp-only", "tcp-only-2": "tcp-only", "cone-1": "cone",
           "firewalled-1": "firewalled", "symmetric-1": "symmetric"}
#: pairs that must connect directly by TCP hole punching
PUNCHED = [("tcp-only-1", "tcp-only-2"), ("tcp-only-1", "cone-1"), ("cone-1", "tcp-only-2"),
           ("tcp-only-2", "firewalled-1"), ("firewalled-1", "tcp-only-1")]
#: then again, within the minute a closed connection's 4-tuple would spend in TIME_WAIT, and
#: the other way round: the same two listener ports, so the same 4-tuple as before
AGAIN = [("tcp-only-1", "cone-1"), ("cone-1", "tcp-only-1"), ("tcp-only-2", "tcp-only-1")]
#: pairs where punching cannot work and a relay carries the file
RELAYED = [("tcp-only-1", "symmetric-1")]
FILE_SIZE = 1 << 20
#: the punched connection is up this soon after the caller's race starts (it has the answer):
#: the timing spared both sides a SYN retransmission (the first comes after 1 s)
NO_RETRANSMIT_S = 0.9


def race(ov: LabOverlay, res: SendResult) -> tuple[str | None, float | None]:
    """The caller's selected attempt and the seconds from the start of its path race (it has
    the answer) to that attempt's connection, from the ``path_selection`` log line."""
    lines = ov.log_lines(res.src, "path_selection", since=res.started_at)
    if not lines:
        return None, None
    selected = str(lines[-1].get("outcome"))
    events: list[list[Any]] = lines[-1].get("timeline") or []
    return selected, next((float(t) for t, e in events if e == f"{selected}: connected"), None)


def receiver_entry(ov: LabOverlay, dst: str, src: str, deadline_s: float = 10.0
                   ) -> dict[str, Any]:
    """The receiver's record of the finished transfer from ``src`` (its status)."""
    deadline = time.monotonic() + deadline_s
    while True:
        for entry in reversed(ov.status(dst).get("transfers") or []):
            if entry.get("from") == ov.user(src) and entry.get("done_at"):
                return dict(entry)
        assert time.monotonic() < deadline, f"{dst} has no finished transfer from {src}"
        time.sleep(0.1)


def send_checked(ov: LabOverlay, src: str, dst: str) -> SendResult:
    name = f"{src}-to-{dst}-{os.urandom(3).hex()}.bin"
    file = ov.make_file(src, name, FILE_SIZE)
    res = ov.send(src, dst, file, timeout=90)
    assert res.ok and res.json is not None, res.describe()
    received = ov.wait_inbox_file(dst, name, timeout=10)
    assert sha256_file(received) == sha256_file(file), res.describe()
    assert res.json.get("sha256") == sha256_file(file)
    return res


@pytest.mark.timeout(300)
def test_tcp_only_pairs_connect_by_simultaneous_open(tmp_path: Path) -> None:
    rows = []
    with LabOverlay(tmp_path, CLIENTS) as ov:
        for src, dst in [*PUNCHED, *AGAIN]:
            res = send_checked(ov, src, dst)
            assert res.json is not None
            selected, connected_s = race(ov, res)
            rows.append(f"{src} -> {dst}: {res.json.get('path')} "
                        f"({res.json.get('technique')}), {selected} connected "
                        f"{connected_s} s into the race; send took {res.seconds:.2f} s")
            assert res.json.get("path") == "tcp-punch", res.describe()
            assert res.json.get("technique") == "simultaneous-open", res.describe()
            assert res.json.get("relay") is None, res.describe()
            # no SYN was retransmitted for it (Linux's first retransmission is at 1 s)
            assert connected_s is not None and connected_s < NO_RETRANSMIT_S, rows[-1]
            entry = receiver_entry(ov, dst, src)
            assert (entry.get("path"), entry.get("technique")) == \
                ("tcp-punch", "simultaneous-open"), entry
        for src, dst in RELAYED:
            res = send_checked(ov, src, dst)
            assert res.json is not None
            rows.append(f"{src} -> {dst}: {res.json.get('path')} "
                        f"({res.json.get('technique')})")
            assert res.json.get("path") == "relay", res.describe()
        print("\n" + "\n".join(rows))

"""Calls in the NAT lab (issue 15), CI-sized: three representative pairs, on real nftables
routers, all three calls at once, judged at both ends (:mod:`tests.helpers.lab_calls`).

- ``cone -> cone``: a punched UDP path (the call's frames go as QUIC datagrams);
- ``public -> cone``: direct TCP first (it completes first), then the punched UDP path
  that completes later (a call moves off direct TCP to direct UDP);
- ``symmetric -> symmetric``: relayed, through a supernode's datagram relay (UDP gets out of
  both sides; the lab's supernodes run one, ``--relay-udp-port``), not the TCP relay: the
  caller's ``call_ended`` log says ``carried_as: datagram``
  (:func:`tests.helpers.lab_paths.call_relay_carriage`).

Unimpaired, every pair meets the issue's bar (loss 0, MOS >= 4.3, both ends). With 40 ms
one way and 1 % loss on each client's uplink, the punched UDP pair meets it (MOS >= 4.0).
A call on a TCP path cannot (:data:`TCP_IMPAIRED_FLOOR`): a lost segment holds every later
frame until it is retransmitted, at least one round trip (160 ms direct, 80 ms per relay
hop) later; a jitter buffer that waits that long adds the wait to the mouth-to-ear delay, one
that does not drops the held frames. The E-model gives MOS < 4.0 for direct TCP either way
(3.9 at best: 80 + 160 + 25 ms, no loss). A call on TCP sends a copy of each frame on a
relay path (its mirror, :mod:`overlay.call.stream_io`), and two connections seldom stall at
once: most such ends now reach 4.0, not all. Those pairs are held to the floor measured in
the lab instead; the full matrix (``python -m tools.natlab.calls``) reports them against the
issue's bar.

Unimpaired calls last 5 s. Impaired ones last the issue's 20 s: at ~2 % random loss a
call's loss is a sample (5 s: 250 frames, a standard deviation of ~0.9 %, ~0.12 MOS), and
5 s calls of the punched UDP pair fell below 4.0 by chance (3.96 at 2.5 % loss); at 20 s
the lab's punched UDP calls scored 4.04-4.21 (36 ends).

The full matrix (49 pairs, 20 s) is ``python -m tools.natlab.calls``, not CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.lab_calls import IMPAIRMENT, CallOutcome, call_logs, run_calls, table
from tests.helpers.lab_overlay import LabOverlay, lab_available
from tests.helpers.lab_paths import (
    CALL_PATHS,
    RELAYED_PATHS,
    UDP_RELAY,
    D,
    T,
    call_relay_carriage,
)

_ok, _why = lab_available()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netlab

UNIMPAIRED_SECONDS = 5.0
IMPAIRED_SECONDS = 20.0
PAIRS = [("cone", "cone"), ("public", "cone"), ("symmetric", "symmetric")]
CLIENTS = {"cone-1": "cone", "cone-2": "cone", "public-1": "public",
           "symmetric-1": "symmetric", "symmetric-2": "symmetric"}
#: the lowest MOS a call on a TCP path reached with the issue's impairment, less a margin
#: (lab runs with the mirror and the stream's 60 ms buffer floor, 19 pairs with a tcp-only
#: side, both ends: direct and punched TCP 3.55-4.3, TCP relay 4.21-4.32; 2.6-3.5 before
#: the mirror): a guard that calls on TCP still hold up, not the issue's bar (see the
#: module's docstring)
TCP_IMPAIRED_FLOOR = 3.3
#: direct TCP and punched TCP (the relayed pair goes through the datagram relay: held to the
#: issue's 3.8)
TCP_PATHS = {D, T}


def run(tmp: Path, impaired: bool) -> list[CallOutcome]:
    floors = {path: TCP_IMPAIRED_FLOOR for path in TCP_PATHS} if impaired else None
    with LabOverlay(tmp, CLIENTS, netem=IMPAIRMENT if impaired else None,
                    netem_supernodes=False) as ov:
        seconds = IMPAIRED_SECONDS if impaired else UNIMPAIRED_SECONDS
        outcomes = run_calls(ov, PAIRS, seconds, impaired, floors=floors)
        ov.check_alive()
        print(f"\n{table(outcomes)}")
        bad = [o for o in outcomes if o.problems]
        details = "\n".join(f"- {o.pair}: {'; '.join(o.problems)}\n{call_logs(ov, o)}"
                            for o in bad)
        assert not bad, f"{table(outcomes)}\n{details}\nlogs in {tmp / 'logs'}"
        return outcomes


def test_expected_call_paths() -> None:
    assert [CALL_PATHS[p] for p in PAIRS] == ["udp-punch", "udp-punch", CALL_PATHS[
        ("symmetric", "symmetric")]]
    assert CALL_PATHS[("symmetric", "symmetric")] in RELAYED_PATHS
    assert call_relay_carriage("symmetric", "symmetric") == UDP_RELAY


@pytest.mark.timeout(120)
def test_calls_unimpaired(tmp_path: Path) -> None:
    """Each pair's call takes its path and meets loss 0 / MOS >= 4.3 at both ends."""
    run(tmp_path, impaired=False)


@pytest.mark.timeout(150)
def test_calls_impaired(tmp_path: Path) -> None:
    """40 ms / 1 % per client uplink: the punched UDP call meets MOS >= 4.0 at both ends,
    the call through the datagram relay MOS >= 3.8; calls on TCP paths stay above
    :data:`TCP_IMPAIRED_FLOOR`."""
    outcomes = run(tmp_path, impaired=True)
    udp = [o for o in outcomes if o.expected == "udp-punch"]
    assert udp and all(o.final and o.final["mos"] >= 4.0 for o in udp)
    relayed = [o for o in outcomes if o.expected in RELAYED_PATHS]
    assert relayed and all(o.final and o.final["mos"] >= 3.8 and o.carried_as == UDP_RELAY
                           for o in relayed)

"""A call moves when the relay carrying it is killed (issue 15): two ``overlay supernode``
processes relay, alice and bob are client daemons with their direct paths taken away (as
behind two symmetric NATs), so the call starts on one relay with the other kept as a spare.
The supernode carrying the call gets SIGKILL mid-call; the call goes on through the other
relay: its ``--json`` lines name the new relay, both sides log ``call_moved``, the call lasts
its seconds, and the longest gap in audio either side received (the call session's own
measure) is under 1 s.

The same after the relays' idle limit: the spare relay session forwards no call data, but
the caller sends a keepalive on it (:mod:`overlay.media.selection`), so the relay does not end
it as idle and the call can still fail over to it. The supernodes run with
``--relay-idle-timeout 2`` and the keepalive every 0.5 s, and the relay is killed once the
call has run three idle limits."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from overlay.client.daemon import ClientDaemon
from overlay.client.options import ClientOptions
from overlay.core.identity import Identity
from overlay.core.records import SupernodeRecord
from overlay.media import selection
from overlay.media.paths import Paths
from tests.helpers.netutil import wait_for
from tests.helpers.overlay_net import ProcessOverlay

SECONDS = 8.0
MAX_GAP_MS = 1000.0
#: the relays' idle limit in the idle test (``--relay-idle-timeout``), the spare keepalive
#: interval there, and how long its call runs before the relay carrying it is killed
IDLE_TIMEOUT_S = 2.0
KEEPALIVE_S = 0.5
KILL_AFTER_S = 3 * IDLE_TIMEOUT_S


def relay_ids(net: ProcessOverlay) -> list[str]:
    """The short relay id (as a call line names it) of each supernode process."""
    return [Identity.load(net.tmp / f"sn{i}" / "node.key").public_key.hex()[:16]
            for i in range(len(net.supernodes))]


@pytest.mark.timeout(180)
async def test_a_call_moves_to_the_other_relay_when_its_relay_is_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await call_and_kill_its_relay(tmp_path, monkeypatch, SECONDS, kill_at_s=0.0)


@pytest.mark.timeout(180)
async def test_the_spare_relay_outlives_the_relays_idle_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "SPARE_KEEPALIVE_S", KEEPALIVE_S)
    await call_and_kill_its_relay(tmp_path, monkeypatch, KILL_AFTER_S + SECONDS,
                                  kill_at_s=KILL_AFTER_S,
                                  relay_args=["--relay-idle-timeout", f"{IDLE_TIMEOUT_S:g}"])


async def call_and_kill_its_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  seconds: float, kill_at_s: float,
                                  relay_args: list[str] | None = None) -> None:
    """alice calls bob for ``seconds`` through one of two relays; once the call's lines say
    it has run ``kill_at_s``, the supernode carrying it is killed; the call must go on
    through the other relay (its spare) with a gap under :data:`MAX_GAP_MS`."""
    monkeypatch.setattr(Paths, "attempts", lambda *args: {})  # no direct path
    net = await ProcessOverlay(tmp_path, 2, ["--heartbeat", "0.5", *(relay_args or [])]
                               ).start()
    clients: list[ClientDaemon] = []
    try:
        for user in ("alice", "bob"):
            client = ClientDaemon(ClientOptions(
                user=user, device="laptop", key_path=tmp_path / f"{user}.key",
                bootstrap=[(net.ips[0], net.port)], state_dir=tmp_path / user,
                heartbeat_s=0.5, presence_refresh_s=2.0, may_become_supernode=False,
                accept_from="anyone"))
            await client.start()
            clients.append(client)
        await wait_for(lambda: all(c.status()["state"] == "attached" for c in clients), 30)
        alice, bob = clients
        ids = relay_ids(net)

        async def both_relays_listed() -> bool:
            """The invite names the relays alice's supernode lists: the call has a spare
            only once that lists both (each supernode holds the other's record: the DHT
            hands a joining node the records it should hold)."""
            session = alice.primary_session()
            if session is None:
                return False
            listed = await session.directory()
            return {s.record.node_key.hex()[:16] for s in listed
                    if isinstance(s.record, SupernodeRecord)
                    and s.record.relay_capacity_bps > 0} == set(ids)

        await wait_for(both_relays_listed, 30)
        calling = asyncio.ensure_future(alice.calls.call({"user": "bob", "seconds": seconds}))

        def latest_line() -> dict[str, Any] | None:
            entry = next((c for c in alice.calls.recent if c["outgoing"]), None)
            return entry["line"] if entry is not None else None

        await wait_for(lambda: (latest_line() or {}).get("seconds", -1) >= kill_at_s
                       or calling.done(), 30 + kill_at_s)
        assert not calling.done(), calling.result()
        line = latest_line()
        assert line is not None and line["path"] == "relay" and line["relay"] in ids, line
        carrying = ids.index(line["relay"])
        killed_at = time.monotonic()
        net.supernodes[carrying].send_signal(signal.SIGKILL)
        result = await asyncio.wait_for(calling, seconds + 30)
        waited = time.monotonic() - killed_at
        await wait_for(lambda: not any(c["active"] for c in bob.calls.recent), 15)
    finally:
        for c in clients:
            await c.stop()
        net.stop()
    lines, final = result["lines"], result["final"]
    other = ids[1 - carrying]
    after = [ln for ln in lines if ln["relay"] == other]
    assert after and all(ln["path"] == "relay" for ln in after), lines
    assert final["relay"] == other and final["seconds"] >= seconds - 0.5, final
    assert waited < seconds - kill_at_s + 5, waited
    (alice_call,) = [c for c in alice.calls.recent if c["outgoing"]]
    (bob_call,) = [c for c in bob.calls.recent if not c["outgoing"]]
    print(f"\nkilled relay {line['relay']} at {line['seconds']} s; the call moved to {other}; "
          f"longest audio gap: alice {alice_call['gap_ms']} ms, bob {bob_call['gap_ms']} ms; "
          f"final {final}")
    assert bob_call["line"]["relay"] == other, bob_call
    assert alice_call["gap_ms"] < MAX_GAP_MS and bob_call["gap_ms"] < MAX_GAP_MS, \
        (alice_call, bob_call)

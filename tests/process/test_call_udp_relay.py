"""Relayed calls between real ``overlay`` processes on loopback (issue 15): three supernodes
that advertise their datagram relays in their records, clients with no direct path
(:mod:`tests.helpers.relay_only`). A call goes through a datagram relay (``overlay call
--json``: path ``relay``, the relay's key), not the TCP relay; each supernode's budget holds
one call session. A relayed call also holds one spare session at a second supernode (its
failover), so a second call at the same time is refused for budget at the first two and goes
to the third."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from overlay.call.session import DEFAULT_BITRATE_BPS, relay_rate_bps
from overlay.core.identity import Identity
from overlay.media.call_relays import call_relay_rate_bps
from tests.helpers.daemons import Daemon, http_status_text, parse_metrics
from tests.helpers.netutil import wait_for
from tests.helpers.overlay_net import ProcessOverlay
from tests.process.test_call_cli import ask, overlay_cli

CALL_RATE_BPS = call_relay_rate_bps(relay_rate_bps(DEFAULT_BITRATE_BPS))


class RelayOnlyClient(Daemon):
    """A client daemon that races relays only."""

    @property
    def argv(self) -> list[str]:
        return [*super().argv[:1], "-m", "tests.helpers.relay_only", *super().argv[3:]]


class CallRelays(ProcessOverlay):
    """Supernodes with a datagram relay each (any free UDP port, advertised in the record)
    and a budget for one call (and a half)."""

    def supernode_args(self, i: int) -> list[str]:
        return [*super().supernode_args(i), "--relay-udp-port", "0",
                "--relay-budget", str(CALL_RATE_BPS * 3 // 2), "--record-refresh", "2"]


def relay_key_prefix(net: ProcessOverlay, i: int) -> str:
    return Identity.load(net.tmp / f"sn{i}" / "node.key").public_key.hex()[:16]


async def metric(net: ProcessOverlay, i: int, name: str, **labels: str) -> float:
    """The sum of supernode ``i``'s series ``name`` with these labels."""
    status, text = await http_status_text(f"http://{net.http(i)}/metrics")
    assert status == 200
    return sum(v for key, v in parse_metrics(text).items()
               if key.partition("{")[0] == name
               and all(f'{k}="{x}"' in key for k, x in labels.items()))


async def relay_idle(net: ProcessOverlay, i: int) -> bool:
    return await metric(net, i, "overlay_relay_reserved_bps") == 0


async def idle_relays(net: ProcessOverlay, n: int) -> bool:
    """Exactly ``n`` of the three relays hold no reservation."""
    return sum([await relay_idle(net, i) for i in range(3)]) == n


async def call_ended(sock: Path, n: int) -> bool:
    calls = (await ask(sock, {"cmd": "calls"})).get("calls") or []
    return len(calls) >= n and not calls[n - 1]["active"]


async def call_active(sock: Path, n: int) -> bool:
    calls = (await ask(sock, {"cmd": "calls"})).get("calls") or []
    return len(calls) >= n and calls[n - 1]["active"]


async def test_calls_take_the_datagram_relay_and_a_full_relay_steers_the_next_call(
        tmp_path: Path) -> None:
    net = await CallRelays(tmp_path, 3).start()
    clients: list[Daemon] = []
    try:
        socks: dict[str, Path] = {}
        for user in ("alice", "bob", "carol", "dave"):
            socks[user] = tmp_path / f"{user}.sock"
            clients.append(RelayOnlyClient([
                "client", "--user", user, "--device", "laptop",
                "--key", str(tmp_path / f"{user}.key"), "--state-dir", str(tmp_path / user),
                "--control", str(socks[user]), "--bootstrap", net.bootstrap_addr,
                "--accept-from", "anyone"], tmp_path / f"{user}.log").start())

        async def sees(caller: str, callee: str) -> bool:
            answer = await ask(socks[caller], {"cmd": "lookup", "user": callee})
            return any(r["online"] for r in answer.get("records", []))

        await wait_for(lambda: sees("alice", "bob"), timeout=60, interval=0.2)
        await wait_for(lambda: sees("carol", "dave"), timeout=60, interval=0.2)

        async def call(caller: str, callee: str, seconds: str) -> list[dict[str, Any]]:
            code, out, err = await overlay_cli("call", callee, "--control", str(socks[caller]),
                                               "--seconds", seconds, "--json")
            assert code == 0, err
            return [json.loads(line) for line in out.splitlines()]

        # one call alone: through a datagram relay, no loss, loopback quality; the rate it
        # asked the relay for was enough
        final = (await call("alice", "bob", "4"))[-1]
        assert final["path"] == "relay", final
        relays = {relay_key_prefix(net, i): i for i in range(3)}
        assert final["relay"] in relays, final
        first = relays[final["relay"]]
        # (the session's bucket holds 4 KiB: a QUIC handshake flight that comes at once on a
        # loaded machine can lose a datagram or two, which QUIC sends again; a rate too low
        # for the call would drop hundreds)
        assert await metric(net, first, "overlay_relay_datagrams_dropped_total",
                            reason="budget") <= 8
        assert final["loss_pct"] == 0, final
        assert final["mos"] >= 4.3, final
        assert await metric(net, first, "overlay_relay_calls_total") == 1
        assert await metric(net, first, "overlay_relay_datagrams_total") >= 300
        # what it took of the relay, QUIC's handshake, headers and ACKs included, fits the
        # rate it reserved
        used_bps = await metric(net, first, "overlay_relay_datagram_bytes_total") * 8 / 4.0
        assert used_bps <= CALL_RATE_BPS, (used_bps, CALL_RATE_BPS)
        # the TCP relay carried nothing of it
        assert await metric(net, first, "overlay_relay_sessions", state="paired") == 0
        # released at the end of the call, not after the relay's idle timeout: the session
        # carrying it, its spare at another relay and the third relay's, which paired too and
        # was dropped unused
        for i in range(3):
            await wait_for(lambda i=i: relay_idle(net, i), timeout=5)

        # bob's side of it: alice's frames came as datagrams too
        await wait_for(lambda: call_ended(socks["bob"], 1), timeout=10)
        bob_side = (await ask(socks["bob"], {"cmd": "calls"}))["calls"][-1]["line"]
        assert bob_side["frames_received"] >= 190 and bob_side["loss_pct"] == 0, bob_side

        # a second call while alice's next one holds a relay (and a spare at another): those
        # relays' budgets hold one call session each, so carol's goes to the third relay
        alices = asyncio.ensure_future(call("alice", "bob", "8"))
        await wait_for(lambda: call_active(socks["alice"], 2), timeout=20)
        # it holds its relay and one spare; the third relay it paired at too, at once or
        # later, is released as soon as it has the spare (it once kept every relay that
        # paired before its selection: carol's call was refused for budget by all three)
        await wait_for(lambda: idle_relays(net, 1), timeout=3)
        carols = (await call("carol", "dave", "4"))[-1]
        alices_final = (await alices)[-1]
        assert alices_final["relay"] != carols["relay"], (alices_final, carols)
        assert {alices_final["relay"], carols["relay"]} <= set(relays)
        for final in (alices_final, carols):
            # two calls and four clients on a shared machine: a supernode stalled for a few
            # hundred ms forwards what queued up at once, past its buckets' 4 KiB, and a frame
            # or two is lost or late (the loopback bar, loss 0 and MOS 4.3, is the single
            # call's above)
            assert final["path"] == "relay" and final["loss_pct"] <= 1.0, final
            assert final["mos"] >= 4.0, final
        busy, other = relays[alices_final["relay"]], relays[carols["relay"]]
        assert await metric(net, other, "overlay_relay_calls_total") >= 1
        # the busy relay refused carol's call for its budget; it relayed alice's two calls
        assert await metric(net, busy, "overlay_relay_call_refused_total", reason="budget") >= 1
        assert await metric(net, busy, "overlay_relay_calls_total") == 2
    finally:
        for client in clients:
            client.kill()
        net.stop()

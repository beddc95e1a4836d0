"""``overlay call`` end to end: real ``overlay`` processes on loopback (a bootstrap node, a
supernode, two clients), the call placed by the CLI through alice's control socket and
answered by bob's client; and calling a user nobody knows."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from overlay.call.session import payload_bytes
from overlay.cli.common import EXIT_OFFLINE
from overlay.client.calls import LINE_KEYS
from overlay.client.control import ControlSocketError, control_request_async
from tests.helpers.daemons import Daemon, daemon_env
from tests.helpers.netutil import wait_for
from tests.helpers.overlay_net import ProcessOverlay
from tests.helpers.repo import REPO

PATHS = {"direct-tcp", "tcp-punch", "udp-punch", "relay"}


async def ask(sock: Path, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return await control_request_async(sock, request, timeout=5)
    except ControlSocketError as exc:
        return {"ok": False, "error": str(exc)}


async def overlay_cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "overlay", *args, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=daemon_env(), cwd=str(REPO))
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_call_between_two_clients_reports_quality_each_second(tmp_path):
    net = await ProcessOverlay(tmp_path, 1).start()
    clients: list[Daemon] = []
    try:
        socks = {}
        for user in ("alice", "bob"):
            socks[user] = tmp_path / f"{user}.sock"
            clients.append(Daemon([
                "client", "--user", user, "--device", "laptop",
                "--key", str(tmp_path / f"{user}.key"), "--state-dir", str(tmp_path / user),
                "--control", str(socks[user]), "--bootstrap", net.bootstrap_addr,
                "--accept-from", "anyone"], tmp_path / f"{user}.log").start())

        async def alice_sees_bob() -> bool:
            answer = await ask(socks["alice"], {"cmd": "lookup", "user": "bob"})
            return any(r["online"] for r in answer.get("records", []))

        await wait_for(alice_sees_bob, timeout=30, interval=0.2)

        code, out, err = await overlay_cli("call", "bob", "--control", str(socks["alice"]),
                                           "--seconds", "3", "--bitrate", "64kbit", "--json")
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert len(lines) >= 3, out
        for line in lines:
            assert tuple(line) == LINE_KEYS
        assert [line["final"] for line in lines] == [False] * (len(lines) - 1) + [True]
        assert [line["seconds"] for line in lines] == sorted(line["seconds"] for line in lines)
        final = lines[-1]
        assert final["path"] in PATHS
        assert final["seconds"] >= 3.0
        # 50 frames a second each way, counted from the first line on
        assert final["frames_sent"] >= 140 and final["frames_received"] >= 100
        assert final["loss_pct"] == 0
        # loopback: the E-model's ceiling for the codec model is about 4.4; 4.3 needs the
        # jitter buffer to stay near its floor (CPU stalls on a shared machine push it up)
        assert final["mos"] >= 4.3, final

        # bob's client answered it and ran its side: frames from alice arrived
        async def bob_call_ended() -> bool:
            calls = (await ask(socks["bob"], {"cmd": "calls"})).get("calls") or []
            return bool(calls) and not calls[-1]["active"]

        await wait_for(bob_call_ended, timeout=10)
        bob_side = (await ask(socks["bob"], {"cmd": "calls"}))["calls"][-1]
        assert bob_side["peer"] == "alice" and bob_side["outgoing"] is False
        assert bob_side["line"]["frames_received"] >= 100
        # the invite carried alice's --bitrate: bob sent at it, and alice got frames of its
        # size (payload_bytes(64 kbit/s) = 160 bytes; bob's default would give 60)
        assert bob_side["bitrate_bps"] == 64_000
        alice_side = (await ask(socks["alice"], {"cmd": "calls"}))["calls"][-1]
        assert alice_side["peer_payload_bytes"] == payload_bytes(64_000) == 160, alice_side
        assert bob_side["peer_payload_bytes"] == 160, bob_side

        # a user nobody knows: the documented exit code, nothing on stdout
        code, out, err = await overlay_cli("call", "nobody", "--control", str(socks["alice"]),
                                           "--seconds", "1", "--json")
        assert code == EXIT_OFFLINE, err
        assert out == "" and "offline or unknown" in err
    finally:
        for client in clients:
            client.kill()
        net.stop()

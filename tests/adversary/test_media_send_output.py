"""Flaw 5 (terminal escapes), end to end over a real overlay: a bootstrap node and a
supernode as ``overlay`` processes, the victim alice as a real ``overlay client`` process
driven by a real ``overlay send``, and the attacker mallory as a client with its own key in
this process, whose receiving side refuses alice's file with an ACK error full of terminal
escapes (title change, screen clear, a forged "sent OK", bidi override). What alice's
terminal gets must show them escaped, never carry them raw.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from overlay.client.control import ControlSocketError, control_request_async
from overlay.client.daemon import ClientDaemon
from overlay.client.options import ClientOptions
from overlay.media import callee as media_callee
from overlay.media.stream import ByteStream
from overlay.media.transfer import TransferError
from tests.helpers.daemons import Daemon, daemon_env, overlay_argv
from tests.helpers.media_attacker import refuse_with_escapes
from tests.helpers.netutil import wait_for
from tests.helpers.overlay_net import ProcessOverlay


async def evil_receive(stream: ByteStream, inbox: Path, *args: Any, **kwargs: Any) -> Any:
    """Mallory's receiving side: take the whole file, then refuse it with escapes."""
    await refuse_with_escapes(stream)
    raise TransferError("refused with escapes")


async def attached(sock: Path) -> bool:
    try:
        status = await control_request_async(sock, {"cmd": "status"}, timeout=2)
    except ControlSocketError:
        return False
    return status.get("state") == "attached"


async def test_overlay_send_prints_a_peers_ack_error_escaped(tmp_path, monkeypatch) -> None:
    net = await ProcessOverlay(tmp_path, 1, ["--heartbeat", "0.5"]).start()
    sock = tmp_path / "alice.sock"
    alice = Daemon(["client", "--user", "alice", "--state-dir", str(tmp_path / "alice"),
                    "--control", str(sock), "--bootstrap", net.bootstrap_addr,
                    "--no-supernode", "--heartbeat", "0.5", "--presence-refresh", "2"],
                   tmp_path / "alice.log").start()
    mallory = ClientDaemon(ClientOptions(
        user="mallory", device="phone", key_path=tmp_path / "mallory.key",
        bootstrap=[(net.ips[0], net.port)], state_dir=tmp_path / "mallory", heartbeat_s=0.5,
        presence_refresh_s=2.0, may_become_supernode=False,
        accept_from="anyone"))  # the attacker answers whoever sends
    monkeypatch.setattr(media_callee, "receive_file", evil_receive)
    src = tmp_path / "report.txt"
    src.write_bytes(b"quarterly numbers\n" * 100)
    try:
        await mallory.start()
        await wait_for(lambda: mallory.status()["state"] == "attached", timeout=30)
        await wait_for(lambda: attached(sock), timeout=30)
        proc = await asyncio.create_subprocess_exec(
            *overlay_argv(["send", "mallory", str(src), "--control", str(sock)],
                          log_json=False),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=daemon_env())
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        await mallory.stop()
        alice.kill()
        net.stop()
    assert proc.returncode == 1, (out, err, alice.log_tail())
    assert b"refused" in err, (err, alice.log_tail())
    for raw in (b"\x1b", b"\x07", b"\r", "\u202e".encode(), "\x9b".encode()):
        assert raw not in out + err, f"overlay send printed the peer's raw {raw!r}: {err!r}"
    assert b"\\x1b]0;owned\\x07" in err, err

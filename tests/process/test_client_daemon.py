"""``overlay client`` processes against a real overlay: a bootstrap node and three supernodes,
each an ``overlay`` process on its own loopback IP.

One scenario, in order: attach to a supernode with a warm backup (status over the control
socket); SIGKILL that supernode -> the client re-attaches elsewhere and another client's
lookup names the new supernode within seconds; clean exit -> the lookup shows it offline;
the bootstrap node goes away and the client restarts from its state dir with no
--bootstrap -> it attaches through its host cache.
"""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

from overlay.attach.adapter import ClientSession, SessionError
from overlay.client.control import ControlSocketError, control_request_async
from overlay.core.identity import Identity
from tests.helpers.daemons import Daemon, wait_ready
from tests.helpers.netutil import loopback_ips, wait_for
from tests.helpers.node_keys import key_args

PORT = 4000
#: test-sized timers: supernodes announce a 1 s heartbeat (dead after 3 missed)
SUPERNODE_ARGS = ["--heartbeat", "0.5", "--record-refresh", "2"]
CLIENT_ARGS = ["--heartbeat", "0.5", "--presence-refresh", "2"]


async def ask(sock: Path, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return await control_request_async(sock, request, timeout=5)
    except ControlSocketError as exc:
        return {"ok": False, "error": str(exc)}


async def directory_size(host: str) -> int:
    try:
        session = await ClientSession.connect(host, PORT, Identity.generate(),
                                              expected_node_key=None, lookup_only=True)
    except SessionError:
        return 0
    try:
        return len(await session.directory())
    except SessionError:
        return 0
    finally:
        session.close()


async def test_client_attaches_fails_over_exits_cleanly_and_restarts_from_cache(tmp_path):
    ips = loopback_ips(4)
    boot_ip, sn_ips = ips[0], ips[1:]
    boot_addr = f"{boot_ip}:{PORT}"
    started: list[Daemon] = []

    def run(name: str, args: list[str]) -> Daemon:
        daemon = Daemon(args, tmp_path / f"{name}.log").start()
        started.append(daemon)
        return daemon

    def client(user: str, *extra: str, log: str | None = None) -> tuple[Daemon, Path]:
        sock = tmp_path / f"{user}.sock"
        daemon = run(log or user, [
            "client", "--user", user, "--device", "laptop",
            "--key", str(tmp_path / f"{user}.key"), "--state-dir", str(tmp_path / user),
            "--control", str(sock), *CLIENT_ARGS, *extra,
        ])
        return daemon, sock

    try:
        boot = run("boot", ["bootstrap", "--listen", boot_addr, "--http", f"{boot_ip}:8080",
                            *key_args(tmp_path, "boot")])
        await wait_ready(f"{boot_ip}:8080", boot)
        supernodes = {
            f"{ip}:{PORT}": run(f"sn{i}", [
                "supernode", "--listen", f"{ip}:{PORT}", "--bootstrap", boot_addr,
                "--http", f"{ip}:8080", *SUPERNODE_ARGS, *key_args(tmp_path, f"sn{i}"),
            ])
            for i, ip in enumerate(sn_ips)
        }
        for ip, daemon in zip(sn_ips, supernodes.values(), strict=True):
            await wait_ready(f"{ip}:8080", daemon)

        async def directory_complete() -> bool:
            return await directory_size(boot_ip) == 3

        await wait_for(directory_complete, timeout=15, interval=0.2)

        alice, alice_sock = client("alice", "--bootstrap", boot_addr)
        bob, bob_sock = client("bob", "--bootstrap", boot_addr)

        # -- attached, with a warm backup on another supernode -------------------------------
        status: dict[str, Any] = {}

        async def alice_ready() -> bool:
            nonlocal status
            status = await ask(alice_sock, {"cmd": "status"})
            return bool(status.get("ok") and status["supernode"] and status["backup"])

        await wait_for(alice_ready, timeout=15, interval=0.1)
        assert status["user"] == "alice" and status["device"] == "laptop"
        assert status["state"] == "attached"
        assert status["public_key"] == Identity.load(tmp_path / "alice.key").public_id
        assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600
        assert stat.S_IMODE(alice_sock.stat().st_mode) == 0o600
        first = status["supernode"]
        assert first["address"] in supernodes
        assert status["backup"]["address"] in supernodes
        assert status["backup"]["node_key"] != first["node_key"]
        assert first["heartbeat_s"] == 1 and status["reflexive"]["port"] > 0
        assert [e["source"] for e in alice.events("attached")] == ["discovery"]
        assert alice.events("bootstrap_key_pinned")

        async def bob_sees_alice_via(node_key: str) -> bool:
            answer = await ask(bob_sock, {"cmd": "lookup", "user": "alice"})
            recs = answer.get("records", []) if answer.get("ok") else []
            return len(recs) == 1 and recs[0]["online"] and (
                recs[0]["supernode"]["node_key"] == node_key)

        await wait_for(lambda: bob_sees_alice_via(first["node_key"]), timeout=10)

        # -- its supernode dies: re-attach elsewhere, visible to bob within seconds ------------
        supernodes[first["address"]].kill()  # SIGKILL
        killed_at = time.monotonic()
        second: dict[str, Any] = {}

        async def alice_moved() -> bool:
            nonlocal second
            s = await ask(alice_sock, {"cmd": "status"})
            if s.get("ok") and s["supernode"] and s["supernode"]["node_key"] != first["node_key"]:
                second = s["supernode"]
                return True
            return False

        await wait_for(alice_moved, timeout=10, interval=0.05)
        reattached_s = time.monotonic() - killed_at
        await wait_for(lambda: bob_sees_alice_via(second["node_key"]), timeout=10)
        visible_s = time.monotonic() - killed_at
        assert visible_s < 8, visible_s
        failover = alice.events("failover")
        assert [f["reason"] for f in failover] == ["lost"]
        assert failover[0]["supernode"] == first["address"]
        # the backup was tried first, and it worked
        assert alice.events("attached")[-1]["source"] == "backup"
        assert second["address"] == status["backup"]["address"]

        async def new_backup() -> bool:
            s = await ask(alice_sock, {"cmd": "status"})
            b = s.get("backup") if s.get("ok") else None
            return bool(b) and b["node_key"] not in (first["node_key"], second["node_key"])

        await wait_for(new_backup, timeout=10)
        status = await ask(alice_sock, {"cmd": "status"})
        assert status["failovers"] == 1 and status["known_supernodes"] == 3

        # -- the next one hangs (SIGSTOP): three silent heartbeats -> lost -> re-attach --------
        hung = supernodes[second["address"]]
        assert hung.proc is not None
        hung.proc.send_signal(signal.SIGSTOP)
        hung_at = time.monotonic()
        try:
            first, second = second, {}
            await wait_for(alice_moved, timeout=15, interval=0.05)
            hang_detected_s = time.monotonic() - hung_at
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        await wait_for(lambda: bob_sees_alice_via(second["node_key"]), timeout=10)
        failover = alice.events("failover")
        assert [f["reason"] for f in failover] == ["lost", "lost"]
        assert "silent" in failover[1]["detail"]
        assert 2 <= hang_detected_s < 8, hang_detected_s

        # -- clean exit: the lookup shows alice offline ----------------------------------------
        answer = await ask(bob_sock, {"cmd": "lookup", "user": "alice"})
        online_seq = answer["records"][0]["seq"]
        assert alice.terminate(signal.SIGTERM) == 0
        assert alice.events("detached")
        assert not alice_sock.exists()

        offline_seq = 0

        async def bob_sees_alice_offline() -> bool:
            nonlocal offline_seq
            answer = await ask(bob_sock, {"cmd": "lookup", "user": "alice"})
            recs = answer.get("records", []) if answer.get("ok") else []
            if len(recs) == 1 and not recs[0]["online"] and recs[0]["supernode"] is None:
                offline_seq = recs[0]["seq"]
                return True
            return False

        await wait_for(bob_sees_alice_offline, timeout=10)
        assert offline_seq > online_seq

        # -- restart without any bootstrap node: the host cache is enough ------------------------
        assert boot.terminate() == 0
        cache = json.loads((tmp_path / "alice" / "supernodes.json").read_text())
        assert len(cache["supernodes"]) == 3
        alice2, _ = client("alice", log="alice2")  # no --bootstrap

        async def alice_back() -> bool:
            s = await ask(alice_sock, {"cmd": "status"})
            return bool(s.get("ok") and s["supernode"])

        await wait_for(alice_back, timeout=15)
        assert [e["source"] for e in alice2.events("discovery")] == ["host_cache"]
        assert not alice2.events("directory_fetched")
        status = await ask(alice_sock, {"cmd": "status"})
        # the SIGKILLed one is still in the cache, but does not answer its probe
        assert status["supernode"]["address"] != failover[0]["supernode"]

        async def bob_sees_alice_back() -> bool:
            answer = await ask(bob_sock, {"cmd": "lookup", "user": "alice"})
            recs = answer.get("records", []) if answer.get("ok") else []
            return len(recs) == 1 and recs[0]["online"] and recs[0]["seq"] > offline_seq

        await wait_for(bob_sees_alice_back, timeout=10)
        assert alice2.terminate(signal.SIGINT) == 0
        assert bob.terminate() == 0
        print(f"re-attached {reattached_s:.2f}s and visible {visible_s:.2f}s after SIGKILL; "
              f"hang detected and re-attached after {hang_detected_s:.2f}s")
    finally:
        for daemon in started:
            daemon.kill()


async def test_control_errors_and_usage(tmp_path):
    """A client with nothing to attach to refuses to start; the control socket is strict."""
    ip = loopback_ips(1)[0]
    nothing = Daemon(["client", "--user", "carol", "--key", str(tmp_path / "k"),
                      "--state-dir", str(tmp_path / "s")], tmp_path / "n.log").start()
    assert nothing.proc is not None and nothing.proc.wait(20) == 2
    assert "nothing to attach to" in nothing.log()

    sock = tmp_path / "c.sock"
    # a bootstrap address where nobody listens: the client keeps backing off, control works
    daemon = Daemon(["client", "--user", "carol", "--key", str(tmp_path / "k"),
                     "--bootstrap", f"{ip}:4000", "--control", str(sock), "--heartbeat", "0.5"],
                    tmp_path / "c.log").start()
    try:
        async def up() -> bool:
            return (await ask(sock, {"cmd": "status"})).get("state") == "connecting"

        await wait_for(up, timeout=15)
        assert (await ask(sock, {"cmd": "frobnicate"}))["error"].startswith("unknown command")
        assert (await ask(sock, {"cmd": "lookup"}))["ok"] is False
        bad = await ask(sock, {"cmd": "lookup", "user": "Not A Name"})
        assert bad["ok"] is False and "user name" in bad["error"]
        nowhere = await ask(sock, {"cmd": "lookup", "user": "bob"})
        assert nowhere == {"ok": False,
                           "error": "lookup failed: not connected to any supernode"}
        # the command-line front end of the same socket
        async def ctl(*args: str) -> tuple[int, dict[str, Any]]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "overlay", "client-ctl", "--control", str(sock), *args,
                stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, json.loads(out)

        code, answer = await ctl("status")
        assert code == 0 and answer["user"] == "carol"
        code, answer = await ctl("lookup", "bob")
        assert code == 1 and answer["ok"] is False
        code, answer = await ctl("raw", '{"cmd": "help"}')
        assert code == 0 and "lookup" in answer["commands"]
        await wait_for(lambda: len(daemon.events("backoff")) >= 2, timeout=10)
        delays = [e["delay_s"] for e in daemon.events("backoff")]
        assert all(d > 0 for d in delays)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


async def test_full_supernode_refusal_sends_client_to_the_alternative_it_names(
    tmp_path, monkeypatch
):
    """In-process: the nearest supernode is full and refuses (FULL) naming another; the
    client attaches there, as an alternative, without a rediscovery."""
    from overlay.attach import SessionConfig
    from overlay.attach.adapter import ProbeResult
    from overlay.client import discovery as client_discovery
    from overlay.client.attach_policy import Source
    from overlay.client.daemon import ClientDaemon
    from overlay.client.links import Attachment, AttemptFailed
    from overlay.client.options import ClientOptions
    from overlay.node.daemon import NodeDaemon, NodeOptions
    from overlay.node.supernode import Supernode, SupernodeOptions
    from overlay.node.tcp_service import ServiceLimits

    boot_ip, full_ip, free_ip = loopback_ips(3)
    limits = ServiceLimits(session=SessionConfig(heartbeat_interval_s=1))
    boot = NodeDaemon(NodeOptions(listen=(boot_ip, PORT), limits=limits))
    full = Supernode(NodeOptions(listen=(full_ip, PORT), bootstrap=[(boot_ip, PORT)],
                                 limits=limits), SupernodeOptions(max_clients=0))
    free = Supernode(NodeOptions(listen=(free_ip, PORT), bootstrap=[(boot_ip, PORT)],
                                 limits=limits))
    daemon: ClientDaemon | None = None
    try:
        for node in (boot, full, free):
            await node.start()

        async def full_knows_both() -> bool:
            return await directory_size(full_ip) == 2

        await wait_for(full_knows_both, timeout=15, interval=0.2)

        # probes say the full one is nearest and has room (as a stale or lying probe might)
        async def fake_probe(host: str, port: int, identity: Identity, *, timeout: float = 2.0,
                             count: int = 2) -> ProbeResult:
            return ProbeResult(host, port, 0.001 if host == full_ip else 0.010, True, 0)

        monkeypatch.setattr(client_discovery, "probe", fake_probe)
        daemon = ClientDaemon(ClientOptions(user="erin", key_path=tmp_path / "erin.key",
                                            bootstrap=[(boot_ip, PORT)], device="phone"))
        tried: list[tuple[str, Source, bool]] = []
        real_try = daemon.supervisor.try_attach

        async def spy(cand: Any, source: Source) -> Attachment | AttemptFailed:
            result = await real_try(cand, source)
            tried.append((cand.host, source, isinstance(result, Attachment)))
            return result

        monkeypatch.setattr(daemon.supervisor, "try_attach", spy)
        await daemon.start()
        await wait_for(lambda: daemon is not None and daemon.attached.is_set(), timeout=15)
        assert tried == [(full_ip, Source.DISCOVERY, False), (free_ip, Source.ALTERNATIVE, True)]
        assert daemon.status()["supernode"]["address"] == f"{free_ip}:{PORT}"
        assert full.refused["full"] == 1 and len(free.attached) == 1
        await daemon.stop()
        daemon = None
        assert not free.attached  # detached on stop
    finally:
        if daemon is not None:
            await daemon.stop()
        for node in (free, full, boot):
            await node.stop()


async def test_unsolicited_messages_sequence_numbers_and_inbox(tmp_path):
    """No sockets: how an attachment reacts to Moving/Refused/SignalDelivery, presence
    sequence numbers that only grow across restarts, and the inbox files."""
    from typing import cast

    from overlay.attach import Moving, Refused, RefuseReason, SignalDelivery
    from overlay.attach.messages import Alternative
    from overlay.client.attach_policy import Candidate, EndReason
    from overlay.client.daemon import ClientDaemon
    from overlay.client.links import Attachment
    from overlay.client.options import ClientOptions, default_device
    from overlay.client.presence import presence_seq
    from overlay.core.records import NAME_PATTERN

    assert NAME_PATTERN.match(default_device())
    cand = Candidate("10.0.0.1", 4000, b"\x01" * 32)
    delivered: list[SignalDelivery] = []
    signal_msg = SignalDelivery("bob", "phone", b"\x02" * 32, b"hello")
    att = Attachment(cand, cast(ClientSession, None), since=0.0, on_signal=delivered.append)
    att.on_message(signal_msg)
    assert delivered == [signal_msg] and not att.ended.done()
    alt = Alternative("10.0.0.2", 4000, b"\x03" * 32)
    att.on_message(Moving("maintenance", (alt,)))
    att.on_message(Refused(int(RefuseReason.FULL), "late", ()))  # the first end counts
    ended = att.ended.result()
    assert (ended.reason, ended.detail, ended.alternatives) == (
        EndReason.MOVING, "maintenance", (alt,))
    refused = Attachment(cand, cast(ClientSession, None), since=0.0)
    refused.on_message(Refused(int(RefuseReason.BAD_RECORD), "stale record", ()))
    assert refused.ended.result().reason is EndReason.REFUSED
    assert refused.ended.result().detail == "BAD_RECORD: stale record"

    state = tmp_path / "state"
    state.mkdir()
    (state / "client.json").write_text(json.dumps({"last_seq": 10**16}))  # clock went back
    seq = presence_seq(state)
    assert seq.next() == 10**16 + 1
    assert presence_seq(state).next() == 10**16 + 2
    assert stat.S_IMODE((state / "client.json").stat().st_mode) == 0o600
    (state / "client.json").write_text("garbage")
    before = int(time.time() * 1000)
    assert presence_seq(state).next() >= before

    inbox = tmp_path / "inbox"
    daemon = ClientDaemon(ClientOptions(user="dave", key_path=tmp_path / "d.key",
                                        state_dir=tmp_path / "dave", inbox=inbox))
    assert stat.S_IMODE((tmp_path / "dave").stat().st_mode) == 0o700
    daemon._deliver(signal_msg)
    (item,) = inbox.iterdir()
    assert stat.S_IMODE(item.stat().st_mode) == 0o600
    stored = json.loads(item.read_text())
    assert stored["from_user"] == "bob" and stored["payload"] == "aGVsbG8="

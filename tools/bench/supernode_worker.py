"""The supernode benchmark's client worker process: N attached clients in one event loop.

Started by :class:`Worker` as ``python -m tools.bench.supernode --worker``; it reads one JSON
command per line on stdin (``attach``, ``refresh``, ``status``, ``stop``) and answers with
JSON lines on stdout. Each client is a sans-IO :class:`ClientConnection` inside a
:class:`SessionProtocol`, with its own ed25519 identity and signed presence record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from overlay.attach import (
    Attach,
    AttachOk,
    ClientConnection,
    DirectoryRequest,
    Event,
    HandshakeComplete,
    MessageReceived,
    PeerClosed,
    PeerDead,
    ProtocolViolation,
    Refused,
)
from overlay.attach.adapter import SessionProtocol
from overlay.core import records
from overlay.core.identity import Identity
from tests.helpers.daemons import daemon_env, track
from tests.helpers.repo import REPO
from tools.bench.procstat import proc_sample

DEVICE = "bench"
#: long enough that no record expires during a run (the supernode republishes, nobody refreshes)
PRESENCE_LIFETIME_S = 3600.0


def user_name(tag: str, index: int) -> str:
    return f"sb-{tag}-{index}"


@dataclass
class BenchClient:
    identity: Identity
    user: str
    proto: SessionProtocol
    seq: int = 1


@dataclass
class WorkerState:
    clients: dict[int, BenchClient] = field(default_factory=dict)
    attached: set[int] = field(default_factory=set)
    failed: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    refused_after_attach: Counter[str] = field(default_factory=Counter)
    refresher: asyncio.Task[None] | None = None


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


class _AttachAttempt:
    """One client's attach: the session callbacks and the outcome they settle
    (``"ok"``, ``"refused_CODE"``, ``"peer_closed"``, ...)."""

    def __init__(self, state: WorkerState, index: int, presence: records.SignedRecord) -> None:
        self.state = state
        self.index = index
        self.presence = presence
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def settle(self, result: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(result)

    def on_event(self, proto: SessionProtocol, event: Event) -> None:
        if isinstance(event, HandshakeComplete):
            proto.send(Attach(self.presence.wire))
        elif isinstance(event, MessageReceived):
            msg = event.message
            if isinstance(msg, AttachOk):
                self.settle("ok")
            elif isinstance(msg, Refused):
                if self.outcome.done():  # a refresh was refused
                    self.state.refused_after_attach[f"refused_{msg.reason_code}"] += 1
                self.settle(f"refused_{msg.reason_code}")
        elif isinstance(event, ProtocolViolation):
            self.settle(f"violation: {event.reason}"[:80])
        elif isinstance(event, PeerClosed):
            self.settle("peer_closed")
        elif isinstance(event, PeerDead):
            self.settle("peer_dead")

    def on_lost(self, proto: SessionProtocol) -> None:
        if not self.outcome.done():
            self.settle("connection_lost")
        elif self.index in self.state.attached:
            self.state.attached.discard(self.index)
            self.state.lost[proto.close_reason[:80]] += 1


async def _attach_one(
    state: WorkerState, index: int, cmd: dict[str, Any], source: str, node_key: bytes
) -> None:
    loop = asyncio.get_running_loop()
    host, port = str(cmd["host"]), int(cmd["port"])
    user = user_name(str(cmd["tag"]), index)
    identity = Identity.generate()
    presence = records.presence(
        identity, user, DEVICE, seq=1, supernode_key=node_key, supernode_host=host,
        supernode_port=port,
        lifetime_s=3 * float(cmd["refresh_s"]) if cmd["refresh_s"] else PRESENCE_LIFETIME_S,
    )
    attempt = _AttachAttempt(state, index, presence)

    def make(now: float) -> ClientConnection:
        return ClientConnection(identity, expected_node_key=node_key, now=now, user=user,
                                device=DEVICE)

    transport: asyncio.BaseTransport | None = None
    proto: SessionProtocol | None = None
    try:
        async with asyncio.timeout(float(cmd["timeout_s"])):
            transport, proto = await loop.create_connection(
                lambda: SessionProtocol(make, attempt.on_event, attempt.on_lost), host, port,
                local_addr=(source, 0),
            )
            assert isinstance(proto.conn, ClientConnection)
            transport.write(proto.conn.start_handshake())
            result = await attempt.outcome
    except TimeoutError:
        result = "timeout"
    except OSError as exc:
        result = f"os_error_{exc.errno}"
    if result == "ok" and proto is not None:
        state.attached.add(index)
        state.clients[index] = BenchClient(identity, user, proto)
    else:
        state.failed[result] += 1
        if transport is not None:
            transport.close()


async def _worker_attach(state: WorkerState, cmd: dict[str, Any]) -> dict[str, Any]:
    node_key = bytes.fromhex(str(cmd["node_key"]))
    sources = [str(s) for s in cmd["sources"]]
    first, last = int(cmd["first"]), int(cmd["last"])
    sem = asyncio.Semaphore(int(cmd["concurrency"]))
    deadline = time.monotonic() + float(cmd["budget_s"])
    started = time.monotonic()
    cpu0 = time.process_time()
    done = 0

    async def one(index: int) -> None:
        nonlocal done
        async with sem:
            if time.monotonic() > deadline:
                state.failed["attach_budget_exceeded"] += 1
                return
            await _attach_one(state, index, cmd, sources[index % len(sources)], node_key)
            done += 1
            if done % 1000 == 0:
                _emit({"progress": done, "attached": len(state.attached)})

    await asyncio.gather(*(one(i) for i in range(first, last)))
    return {
        "attached": sorted(state.attached),
        "failed": dict(state.failed),
        "seconds": round(time.monotonic() - started, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),
    }


async def _refresh_presence(state: WorkerState, cmd: dict[str, Any]) -> None:
    """Like overlay.client.daemon's refresh loop: every ``interval_s`` each client re-signs its
    presence record (seq + 1), sends it as a new Attach, and asks for the directory. The
    clients are spread evenly over the interval."""
    interval = float(cmd["interval_s"])
    node_key = bytes.fromhex(str(cmd["node_key"]))
    host, port = str(cmd["host"]), int(cmd["port"])
    loop = asyncio.get_running_loop()
    request_ids = 1 << 20
    while True:
        order = sorted(state.attached)
        started = loop.time()
        for k, index in enumerate(order):
            due = started + interval * k / max(1, len(order))
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            client = state.clients.get(index)
            if client is None or index not in state.attached:
                continue
            client.seq += 1
            signed = records.presence(
                client.identity, client.user, DEVICE, seq=client.seq, supernode_key=node_key,
                supernode_host=host, supernode_port=port, lifetime_s=3 * interval,
            )
            client.proto.send(Attach(signed.wire))
            request_ids += 1
            client.proto.send(DirectoryRequest(request_ids))
            state.refreshes += 1
        rest = started + interval - loop.time()
        if rest > 0:
            await asyncio.sleep(rest)


async def worker_main() -> int:
    loop = asyncio.get_running_loop()
    state = WorkerState()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break  # the benchmark is gone
        cmd = json.loads(line)
        if cmd["cmd"] == "attach":
            _emit(await _worker_attach(state, cmd))
        elif cmd["cmd"] == "refresh":
            state.refresher = asyncio.create_task(_refresh_presence(state, cmd))
        elif cmd["cmd"] == "status":
            _emit({"alive": len(state.attached), "lost": dict(state.lost),
                   "refreshes": state.refreshes,
                   "refused_after_attach": dict(state.refused_after_attach),
                   "cpu_s": time.process_time(), "rss_kib": proc_sample(os.getpid()).rss_kib})
        elif cmd["cmd"] == "stop":
            break
    if state.refresher is not None:
        state.refresher.cancel()
    for client in state.clients.values():
        client.proto.abort_after_flush()
    await asyncio.sleep(0.1)
    return 0


class Worker:
    """The benchmark's handle on one worker process (JSON lines over stdin/stdout)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.supernode", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=daemon_env(), cwd=REPO,
        )
        track(self.proc)

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    async def receive(self, timeout: float) -> dict[str, Any]:
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None
        async with asyncio.timeout(timeout):
            line = await asyncio.to_thread(stdout.readline)
        if not line:
            raise RuntimeError(f"worker {self.index} exited (code {self.proc.poll()})")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"cmd": "stop"})
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)



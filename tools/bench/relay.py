"""Relay benchmark: forwarded throughput and CPU per frame / per Mbit/s, overlay vs coturn.

``python -m tools.bench.relay [--quick] [--sessions 1,100,1000] [--voice-s 10] [--bulk-s 5]
[--no-coturn] [--out FILE]``

Overlay side: one real ``overlay bootstrap`` and one ``overlay supernode`` process on loopback
(``127.A.B.*``, A.B random per run), the supernode with a relay budget that never throttles
(``--relay-budget 100Gbit --relay-session-cap 50Gbit --relay-max-sessions 2000``) but with the
budget accounting on (every chunk is charged). Phases, one after the other:

- ``voice_N`` (N in ``--sessions``): N relay sessions are paired (caller, then callee, same
  32-byte token, the relay's own hello/status wire format from :mod:`overlay.relay`). Callers
  bind distinct source IPs (the relay allows 8 sessions per caller IP). Then for ``--voice-s``
  seconds one shared 20 ms timer writes one 160-byte frame on both halves of every session:
  a call, 50 frames/s each way. Receivers count bytes (frames = bytes / 160);
  after the last tick the run waits (<= 3 s) for everything in flight.
- ``bulk``: one session, caller -> callee as fast as the sender can write (blocking sockets in
  two threads, 256 KiB writes) for ``--bulk-s`` seconds. The relay ends a session at its
  per-session byte limit (1 GiB), so the sender closes after 960 MiB and a new session is paired
  if time remains.

The relay process's CPU is the scheduler's ``se.sum_exec_runtime`` summed over its threads
(``/proc/PID/task/*/sched``, ns resolution; ``utime + stime`` ticks from ``/proc/PID/stat`` where
that is missing) before and after each phase: ``cpu_pct`` (% of one core),
``cpu_us_per_frame`` (CPU / frames forwarded),
``cpu_us_per_mbit`` (CPU seconds per forwarded Mbit, in µs), and for bulk ``gbit_s`` and
``gbit_s_per_core = gbit_s / cpu fraction``. Kernel time is included (on loopback the relay's
send syscall also runs the receiver's TCP receive path).

coturn side (``turnserver``, installed with apt-get when missing): started on loopback with a
long-term credential (``--user``/``--realm``), ``--allow-loopback-peers``, driven by its own
``turnutils_uclient -T`` (RFC 6062 TCP relay, client-to-client). Voice: one
``-m 2 -l 160 -z 20`` process per call (2 sockets paired into one call, each sending a 160-byte
message every 20 ms to the other through the relay = 50 frames/s each way, like ours; one
process per call because uclient meshes all its sockets, m*(m-1) TCP connections). Frames
relayed = growth of the processes' ``tot_recv_msgs`` over the window; above
``--coturn-max-sessions`` calls (default 100) the uclient processes (~2 % of a core each) would
starve on 2 cores, so those rows are not run, and a row that delivered < 95 % of the offered
frames is marked invalid. Bulk: ``-m 1 -l 8000 -z 0``; what coturn forwarded is the server's own
written byte count (/proc/PID/io) over the stretch where it grew, at most ``--bulk-s``
(uclient's send loop stalls after ~3 s at full speed). CPU = the turnserver process's.

Every process started here is killed at the end (finally + atexit). JSON to stdout (and
``--out``), a table to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from overlay.relay.protocol import (
    REASON_UNKNOWN_TOKEN,
    ROLE_CALLEE,
    ROLE_CALLER,
    TOKEN_BYTES,
    decode_status,
    encode_hello,
)
from tests.helpers.daemons import Daemon, track, wait_ready
from tools.bench.procstat import ProcSample, cpu_pct, raise_fd_limit, sched_sample

PORT = 4300
HTTP_PORT = 8300
TURN_PORT = 3478
FRAME = 160
FPS = 50
SESSIONS_PER_CALLER_IP = 8
#: rate each voice half asks for (0 would reserve the whole 50 Gbit/s session cap)
VOICE_RATE_BPS = 10_000_000
BULK_CHUNK = 256 * 1024
BULK_SESSION_BYTES = 960 * 2**20
TURN_USER, TURN_PASS, TURN_REALM = "bench", "benchpw", "bench.local"
#: a voice row counts when it delivered at least this share of the offered frames
VALID_SHARE = 0.95
#: coturn voice runs one uclient process per call (see coturn_voice_phase); each takes ~2 % of
#: a core by itself, so beyond ~100 calls on 2 cores the generator, not coturn, is measured
COTURN_MAX_SESSIONS = 100


def log(msg: str) -> None:
    print(f"[relay-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Addrs:
    def __init__(self) -> None:
        self.a, self.b = 2 + secrets.randbelow(250), secrets.randbelow(240)
        self.bootstrap = f"127.{self.a}.{self.b}.1"
        self.supernode = f"127.{self.a}.{self.b}.2"
        self.turn = f"127.{self.a}.{self.b}.3"
        self._phase = 0

    def phase_ips(self) -> tuple[str, str]:
        """(caller prefix, callee prefix): fresh /24s for every phase."""
        self._phase += 1
        c = self.b + 2 * self._phase
        return f"127.{self.a}.{c & 255}", f"127.{self.a}.{(c + 1) & 255}"


def cpu_stats(a: ProcSample, b: ProcSample, frames: int, nbytes: int) -> dict[str, Any]:
    cpu = b.cpu_s - a.cpu_s
    wall = b.at - a.at
    mbit = nbytes * 8 / 1e6
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 6),
        "cpu_pct": round(100 * cpu / wall, 2) if wall > 0 else None,
        "cpu_user_s": round(b.user_s - a.user_s, 3),
        "cpu_sys_s": round(b.sys_s - a.sys_s, 3),
        "frames": frames,
        "cpu_us_per_frame": round(1e6 * cpu / frames, 2) if frames else None,
        "mbit_s": round(mbit / wall, 3) if wall > 0 else None,
        "cpu_us_per_mbit": round(1e6 * cpu / mbit, 2) if mbit else None,
    }


# -- overlay: voice sessions (asyncio) ---------------------------------------------------------


class VoiceProto(asyncio.Protocol):
    """One half of a relay session: sends the hello, parses the status, then counts bytes."""

    def __init__(self, hello: bytes) -> None:
        self.hello = hello
        self.answer: asyncio.Future[tuple[bool, str]] = \
            asyncio.get_running_loop().create_future()
        self.status = bytearray()
        self.rx = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            self.rx += len(data)
            return
        self.status += data
        parsed = decode_status(bytes(self.status))
        if parsed is None:
            return
        ok, reason, used = parsed
        self.rx += len(self.status) - used
        self.answer.set_result((ok, reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionError(f"closed before the answer: {exc}"))


async def open_half(host: str, token: bytes, role: int, source: str,
                    timeout: float) -> VoiceProto:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    hello = encode_hello(role, token, VOICE_RATE_BPS)
    while True:
        _, proto = await loop.create_connection(
            lambda: VoiceProto(hello), host, PORT, local_addr=(source, 0))
        ok, reason = await asyncio.wait_for(proto.answer, max(0.1, deadline - loop.time()))
        if ok:
            return proto
        assert proto.transport is not None
        proto.transport.close()
        if role == ROLE_CALLEE and reason == REASON_UNKNOWN_TOKEN and loop.time() < deadline:
            await asyncio.sleep(0.02)
            continue
        raise ConnectionError(f"relay refused: {reason}")


async def pair_sessions(host: str, n: int, callers: str, callees: str,
                        concurrency: int = 64) -> list[tuple[VoiceProto, VoiceProto]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[VoiceProto, VoiceProto]:
        token = os.urandom(TOKEN_BYTES)
        src_a = f"{callers}.{1 + i // SESSIONS_PER_CALLER_IP}"
        src_b = f"{callees}.{1 + i % 250}"
        async with sem:
            a = asyncio.create_task(open_half(host, token, ROLE_CALLER, src_a, 20))
            await asyncio.sleep(0.01)
            try:
                b = await open_half(host, token, ROLE_CALLEE, src_b, 20)
            except BaseException:
                a.cancel()
                with contextlib.suppress(BaseException):
                    await a
                raise
            return await a, b

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def voice_phase(relay_pid: int, addrs: Addrs, n: int, seconds: float,
                      idle_pct: float | None = None) -> dict[str, Any]:
    callers, callees = addrs.phase_ips()
    t0 = time.monotonic()
    pairs = await pair_sessions(addrs.supernode, n, callers, callees)
    pair_s = time.monotonic() - t0
    frame = os.urandom(FRAME)
    writers = [half.transport for pair in pairs for half in pair]
    receivers = [half for pair in pairs for half in pair]
    loop = asyncio.get_running_loop()
    rx0 = sum(r.rx for r in receivers)
    ticks_total = int(seconds * FPS)
    before = sched_sample(relay_pid)
    start = loop.time()
    ticks = late = 0
    while ticks < ticks_total:
        for w in writers:
            w.write(frame)  # type: ignore[union-attr]
        ticks += 1
        delay = start + ticks / FPS - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late += 1
    send_s = loop.time() - start
    sent = ticks * len(writers)
    for _ in range(300):  # <= 3 s for what is still in flight
        if sum(r.rx for r in receivers) - rx0 >= sent * FRAME:
            break
        await asyncio.sleep(0.01)
    after = sched_sample(relay_pid)
    got = sum(r.rx for r in receivers) - rx0
    for a, b in pairs:
        for half in (a, b):
            if half.transport is not None:
                half.transport.abort()
    out = {"sessions": n, "direction": "both (a call: caller<->callee)", "frame_bytes": FRAME,
           "fps_per_direction": FPS, "pair_s": round(pair_s, 2),
           "frames_sent": sent, "frames_received": got // FRAME,
           "offered_fps": len(writers) * FPS, "achieved_fps": round(got / FRAME / send_s, 1),
           "late_ticks": late,
           "valid": got / FRAME >= VALID_SHARE * sent,
           **cpu_stats(before, after, got // FRAME, got)}
    if idle_pct is not None and got:
        net = max(0.0, out["cpu_s"] - idle_pct / 100 * out["wall_s"])
        out["cpu_us_per_frame_net_of_idle"] = round(1e6 * net / (got // FRAME), 2)
    await asyncio.sleep(1.0)  # let the relay tear the sessions down outside the next window
    return out


# -- overlay: bulk (blocking sockets in threads) -----------------------------------------------


def _read_status(sock: socket.socket) -> tuple[bool, str]:
    buf = b""
    while True:
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("relay closed before the status")
        buf += byte
        parsed = decode_status(buf)
        if parsed is not None:
            return parsed[0], parsed[1]


def _bulk_pair(host: str, src_a: str, src_b: str) -> tuple[socket.socket, socket.socket]:
    token = os.urandom(TOKEN_BYTES)
    a = socket.create_connection((host, PORT), timeout=10, source_address=(src_a, 0))
    a.sendall(encode_hello(ROLE_CALLER, token, 0))
    deadline = time.monotonic() + 10
    while True:
        time.sleep(0.02)
        b = socket.create_connection((host, PORT), timeout=10, source_address=(src_b, 0))
        b.sendall(encode_hello(ROLE_CALLEE, token, 0))
        ok, reason = _read_status(b)
        if ok:
            break
        b.close()
        if reason != REASON_UNKNOWN_TOKEN or time.monotonic() > deadline:
            a.close()
            raise ConnectionError(f"relay refused: {reason}")
    ok, reason = _read_status(a)
    if not ok:
        raise ConnectionError(f"relay refused the caller: {reason}")
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def bulk_run(host: str, callers: str, callees: str, seconds: float,
             relay_pid: int) -> dict[str, Any]:
    chunk = os.urandom(BULK_CHUNK)
    stop_at = time.monotonic() + seconds
    received = 0
    sessions = 0
    lock = threading.Lock()

    def sender(sock: socket.socket) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while sent < BULK_SESSION_BYTES and time.monotonic() < stop_at:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.shutdown(socket.SHUT_WR)

    def receiver(sock: socket.socket) -> None:
        nonlocal received
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        with contextlib.suppress(OSError):
            while True:
                k = sock.recv_into(view)
                if not k:
                    break
                with lock:
                    received += k

    before = sched_sample(relay_pid)
    while time.monotonic() < stop_at - 0.2:
        sessions += 1
        a, b = _bulk_pair(host, f"{callers}.{sessions}", f"{callees}.{sessions}")
        a.settimeout(None)
        b.settimeout(None)
        threads = [threading.Thread(target=sender, args=(a,)),
                   threading.Thread(target=receiver, args=(b,))]
        for t in threads:
            t.start()
        threads[0].join()
        threads[1].join(timeout=5)
        b.shutdown(socket.SHUT_WR) if threads[1].is_alive() else None
        threads[1].join(timeout=2)
        a.close()
        b.close()
    after = sched_sample(relay_pid)
    stats = cpu_stats(before, after, 0, received)
    stats.pop("frames")
    stats.pop("cpu_us_per_frame")
    gbit = received * 8 / 1e9 / stats["wall_s"]
    frac = stats["cpu_s"] / stats["wall_s"]
    return {"sessions_used": sessions, "bytes": received, "write_bytes": BULK_CHUNK,
            "gbit_s": round(gbit, 3),
            "gbit_s_per_core": round(gbit / frac, 3) if frac > 0 else None, **stats}


# -- overlay: the run --------------------------------------------------------------------------


async def run_overlay(args: argparse.Namespace, addrs: Addrs, workdir: Path) -> dict[str, Any]:
    boot_addr = f"{addrs.bootstrap}:{PORT}"
    boot = Daemon(["--log-level", "warning", "bootstrap", "--listen", boot_addr,
                   "--http", f"{addrs.bootstrap}:{HTTP_PORT}",
                   "--state-dir", str(workdir / "boot")],
                  workdir / "bootstrap.log", name="bootstrap", log_json=False,
                  http=f"{addrs.bootstrap}:{HTTP_PORT}")
    sn = Daemon(["--log-level", "warning", "supernode",
                 "--listen", f"{addrs.supernode}:{PORT}", "--bootstrap", boot_addr,
                 "--http", f"{addrs.supernode}:{HTTP_PORT}", "--state-dir", str(workdir / "sn"),
                 "--relay-budget", "100Gbit", "--relay-session-cap", "50Gbit",
                 "--relay-max-sessions", "2000", "--max-clients", "20000",
                 "--max-conns-per-ip", "20000"],
                workdir / "supernode.log", name="supernode", log_json=False,
                http=f"{addrs.supernode}:{HTTP_PORT}")
    out: dict[str, Any] = {"relay": f"{addrs.supernode}:{PORT}"}
    try:
        boot.start()
        await wait_ready(boot.http, boot, 30.0)
        sn.start()
        await wait_ready(sn.http, sn, 30.0)
        await asyncio.sleep(1.0)
        a, b = sched_sample(sn.pid), None
        await asyncio.sleep(2.0)
        b = sched_sample(sn.pid)
        out["idle_cpu_pct"] = cpu_pct(a, b)
        for n in args.sessions:
            log(f"overlay voice x{n}")
            try:
                out[f"voice_{n}"] = await asyncio.wait_for(
                    voice_phase(sn.pid, addrs, n, args.voice_s, out["idle_cpu_pct"]),
                    args.voice_s + 60)
            except Exception as exc:
                out[f"voice_{n}"] = {"error": f"{type(exc).__name__}: {exc}"}
        log("overlay bulk")
        callers, callees = addrs.phase_ips()
        try:
            out["bulk"] = await asyncio.wait_for(asyncio.to_thread(
                bulk_run, addrs.supernode, callers, callees, args.bulk_s, sn.pid),
                args.bulk_s + 60)
        except Exception as exc:
            out["bulk"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        sn.kill()
        boot.kill()
    return out


# -- coturn ------------------------------------------------------------------------------------


def ensure_coturn() -> str | None:
    """None when turnserver/turnutils_uclient are there (installed now if needed), else why."""
    if shutil.which("turnserver") and shutil.which("turnutils_uclient"):
        return None
    log("turnserver missing: apt-get install -y coturn")
    try:
        proc = subprocess.run(["apt-get", "install", "-y", "coturn"], capture_output=True,
                              timeout=180, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install coturn: {exc}"
    if shutil.which("turnserver") and shutil.which("turnutils_uclient"):
        return None
    return f"apt-get install coturn failed: {proc.stderr.decode(errors='replace')[-300:]}"


def coturn_version() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "coturn"],
                             capture_output=True, timeout=5).stdout.decode()
        return out or None
    return None


#: uclient prints with stdio: into a file that is block-buffered, and its once-a-second progress
#: lines would reach the log in 4 KiB lumps (tens of seconds late for one call)
LINE_BUFFERED = ["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf") else []

PROGRESS = re.compile(r"start_mclient: msz=\d+, tot_send_msgs=(\d+), tot_recv_msgs=(\d+), "
                      r"tot_send_bytes ~ (\d+), tot_recv_bytes ~ (\d+)")


def written_bytes(pid: int) -> int:
    """Bytes the process has written with write/send syscalls (``wchar`` of /proc/PID/io)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError(f"no wchar in /proc/{pid}/io")


def coturn_bulk_phase(turn_pid: int, host: str, workdir: Path, seconds: float) -> dict[str, Any]:
    """One ``turnutils_uclient -T -m 1 -l 8000 -z 0`` pair, as fast as it sends.

    What coturn forwards is read from the server itself (bytes it wrote, /proc/PID/io), sampled
    every 0.1 s with its CPU: uclient's own counters lag, and its send loop stalls after a few
    seconds at full speed (it stops reading while its sockets are full), so the window is the
    stretch where the server's output grew, at most ``seconds`` long."""
    cmd = [*LINE_BUFFERED, "turnutils_uclient", "-T", "-l", "8000", "-m", "1", "-n", "1000000",
           "-z", "0", "-u", TURN_USER, "-w", TURN_PASS, "-p", str(TURN_PORT), "-e", host, host]
    with open(workdir / "uclient_bulk.log", "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    track(proc)
    samples: list[tuple[ProcSample, int]] = []
    active: list[int] = []  # indexes of samples after which the output grew
    deadline = time.monotonic() + seconds + 15  # uclient allocates and connects for ~4 s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            samples.append((sched_sample(turn_pid), written_bytes(turn_pid)))
            if len(samples) > 1 and samples[-1][1] - samples[-2][1] > 1_000_000:
                active.append(len(samples) - 2)
                if samples[-1][0].at - samples[active[0]][0].at >= seconds:
                    break
            elif active and samples[-1][0].at - samples[active[-1] + 1][0].at > 2.0:
                break  # stalled for 2 s after traffic: the stretch is over
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    out: dict[str, Any] = {"command": " ".join(cmd[len(LINE_BUFFERED):]),
                           "window": "while coturn's output grew (server-side byte count)"}
    if not active:
        out["error"] = "coturn forwarded nothing (see uclient_bulk.log)"
        return out
    first, last = samples[active[0]], samples[active[-1] + 1]
    stats = cpu_stats(first[0], last[0], 0, last[1] - first[1])
    for key in ("frames", "cpu_us_per_frame"):
        stats.pop(key)
    gbit = (last[1] - first[1]) * 8 / 1e9 / stats["wall_s"]
    frac = stats["cpu_s"] / stats["wall_s"]
    out.update(stats, bytes=last[1] - first[1], gbit_s=round(gbit, 3),
               gbit_s_per_core=round(gbit / frac, 3) if frac > 0 else None)
    return out


def _last_progress(path: Path) -> tuple[int, int] | None:
    """(tot_recv_msgs, tot_recv_bytes) of the newest progress line of one uclient log."""
    try:
        lines = PROGRESS.findall(path.read_text(errors="replace"))
    except OSError:
        return None
    return (int(lines[-1][1]), int(lines[-1][3])) if lines else None


def _next_progress_line(path: Path, timeout: float = 3.0) -> None:
    """Return as soon as uclient has printed one more progress line (one a second)."""
    def lines() -> int:
        try:
            return len(PROGRESS.findall(path.read_text(errors="replace")))
        except OSError:
            return 0

    seen, deadline = lines(), time.monotonic() + timeout
    while lines() == seen and time.monotonic() < deadline:
        time.sleep(0.005)


def coturn_voice_phase(turn_pid: int, host: str, workdir: Path, n: int,
                       seconds: float) -> dict[str, Any]:
    """N calls through coturn: one ``turnutils_uclient -T -m 2`` process per call.

    One process per call because uclient's TCP mode connects every client socket to every
    other one's relay address (m*(m-1) data connections: -m 200 made ~10k and ran the server
    out of descriptors). A process sends 160-byte messages every 20 ms from each of its two
    sockets to the other through the relay: 50 frames/s each way, like ours.
    The window starts once every process prints a progress line with traffic (setup left out)
    and lasts ``seconds``; frames = the sum over processes of tot_recv_msgs growth in the
    window, from uclient's once-a-second progress lines (each end equally up to 1 s old)."""
    count = int((seconds + 60) * FPS)  # outlasts setup and window; stopped after the window
    cmd = [*LINE_BUFFERED, "turnutils_uclient", "-T", "-l", str(FRAME), "-m", "2", "-n", str(count),
           "-z", "20", "-u", TURN_USER, "-w", TURN_PASS, "-p", str(TURN_PORT),
           "-e", host, host]
    logs = [workdir / f"uclient_voice{n}_{i}.log" for i in range(n)]
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"sessions": n, "uclient_processes": n,
                           "command": " ".join(cmd), "offered_fps": 2 * n * FPS}
    try:
        t0 = time.monotonic()
        for i, logf in enumerate(logs):
            with open(logf, "wb") as f:
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            procs.append(proc)
            track(proc)
            if i % 25 == 24:
                time.sleep(0.05)  # uclient allocates in ~1 s; a burst of 1000 is fine, slower
        deadline = time.monotonic() + 30 + n * 0.03
        while True:
            started = sum(1 for f in logs if (_last_progress(f) or (0, 0))[0] > 0)
            dead = sum(1 for p in procs if p.poll() is not None)
            if started == n or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out["setup_s"] = round(time.monotonic() - t0, 2)
        out["sending_at_window_start"] = started
        out["exited_before_window"] = dead
        if started == 0:
            out["error"] = f"no uclient process was sending after {out['setup_s']} s"
            return out
        # both ends of the window sit just after a progress line of process 0: exact for one
        # call; with many, the other processes' lines are as stale at both ends on average
        _next_progress_line(logs[0])
        c0 = [_last_progress(f) or (0, 0) for f in logs]
        before = sched_sample(turn_pid)
        time.sleep(max(0.0, seconds - 0.5))  # the measuring window itself
        _next_progress_line(logs[0])
        after = sched_sample(turn_pid)
        c1 = [_last_progress(f) or (0, 0) for f in logs]
        frames = sum(b[0] - a[0] for a, b in zip(c0, c1, strict=True))
        nbytes = sum(b[1] - a[1] for a, b in zip(c0, c1, strict=True))
        out["exited_early"] = sum(1 for p in procs if p.poll() is not None)
        out.update(cpu_stats(before, after, frames, nbytes))
        out["achieved_fps"] = round(frames / out["wall_s"], 1)
        out["valid"] = out["achieved_fps"] >= VALID_SHARE * out["offered_fps"]
        if not out["valid"]:
            out["invalid_because"] = (
                "the uclient processes did not keep 50 frames/s each way (the load generator "
                "starved); late frames coalesce into larger TCP reads, so CPU per frame is not "
                "a voice figure")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    return out


def run_coturn(args: argparse.Namespace, addrs: Addrs, workdir: Path) -> dict[str, Any]:
    why = ensure_coturn()
    if why:
        return {"error": why}
    host = addrs.turn
    cmd = ["turnserver", "--listening-ip", host, "--relay-ip", host,
           "--listening-port", str(TURN_PORT), "--min-port", "20000", "--max-port", "60000",
           "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--lt-cred-mech",
           "--user", f"{TURN_USER}:{TURN_PASS}", "--realm", TURN_REALM,
           "--log-file", "stdout", "--simple-log", "--no-stun", "--total-quota", "0",
           "--user-quota", "0", "--max-bps", "0", "--pidfile", str(workdir / "turn.pid")]
    logf = open(workdir / "turnserver.log", "wb")
    turn = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    logf.close()
    track(turn)
    out: dict[str, Any] = {"version": coturn_version(), "server": f"{host}:{TURN_PORT}",
                           "command": " ".join(cmd)}
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if turn.poll() is not None:
                raise RuntimeError("turnserver exited: " + (
                    workdir / "turnserver.log").read_text(errors="replace")[-400:])
            with contextlib.suppress(OSError), socket.create_connection((host, TURN_PORT), 0.5):
                break
            time.sleep(0.1)
        time.sleep(1.0)
        a = sched_sample(turn.pid)
        time.sleep(2.0)
        b = sched_sample(turn.pid)
        out["idle_cpu_pct"] = cpu_pct(a, b)
        for n in args.sessions:
            if n > args.coturn_max_sessions:
                out[f"voice_{n}"] = {
                    "sessions": n, "skipped": True,
                    "error": f"not run: more than --coturn-max-sessions "
                             f"{args.coturn_max_sessions} calls; turnutils_uclient needs one "
                             f"process per call here (~2 % of a core each), so {n} would "
                             f"measure the starved load generator (at 300 calls: 45 % of the "
                             f"offered frames, coalesced)"}
                continue
            log(f"coturn voice x{n}")
            out[f"voice_{n}"] = coturn_voice_phase(turn.pid, host, workdir, n, args.voice_s)
            r = out[f"voice_{n}"]
            if r.get("frames"):
                net = max(0.0, r["cpu_s"] - out["idle_cpu_pct"] / 100 * r["wall_s"])
                r["cpu_us_per_frame_net_of_idle"] = round(1e6 * net / r["frames"], 2)
        log("coturn bulk")
        out["bulk"] = coturn_bulk_phase(turn.pid, host, workdir, args.bulk_s)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if turn.poll() is None:
            turn.kill()
            turn.wait(5)
    return out


# -- report ------------------------------------------------------------------------------------


def table(doc: dict[str, Any], sessions: list[int]) -> str:
    rows = [f"{'phase':<12} {'impl':<8} {'frames/s':>10} {'Mbit/s':>9} {'cpu%':>7} "
            f"{'us/frame':>9} {'net':>7} {'us/Mbit':>9} {'Gb/s/core':>9}"]
    for phase in [f"voice_{n}" for n in sessions] + ["bulk"]:
        for impl in ("overlay", "coturn"):
            r = doc.get(impl, {}).get(phase)
            if not isinstance(r, dict):
                continue
            if "error" in r and "cpu_s" not in r:
                rows.append(f"{phase:<12} {impl:<8} error: {r['error'][:60]}")
                continue
            fps = r["frames"] / r["wall_s"] if r.get("frames") and r.get("wall_s") else None

            def f(v: Any, spec: str) -> str:
                return format(v, spec) if isinstance(v, int | float) else "-"

            rows.append(f"{phase:<12} {impl:<8} {f(fps, '10.0f')} {f(r.get('mbit_s'), '9.1f')} "
                        f"{f(r.get('cpu_pct'), '7.1f')} {f(r.get('cpu_us_per_frame'), '9.2f')} "
                        f"{f(r.get('cpu_us_per_frame_net_of_idle'), '7.2f')} "
                        f"{f(r.get('cpu_us_per_mbit'), '9.1f')} "
                        f"{f(r.get('gbit_s_per_core'), '9.2f')}"
                        + ("  INVALID: load generator starved" if r.get("valid") is False else ""))
    return "\n".join(rows)


def targets(doc: dict[str, Any], sessions: list[int]) -> dict[str, Any]:
    """Ours against coturn's row for the same N; where coturn has no valid row for that N,
    against the lowest CPU per frame of coturn's valid rows (said so in the key)."""
    def valid(impl: str, n: int) -> float | None:
        r = doc.get(impl, {}).get(f"voice_{n}", {})
        v = r.get("cpu_us_per_frame") if r.get("valid") else None
        return v if isinstance(v, int | float) else None

    coturn_valid = [v for n in sessions if (v := valid("coturn", n)) is not None]
    out: dict[str, Any] = {}
    for n in sessions:
        ours, theirs = valid("overlay", n), valid("coturn", n)
        if theirs is not None:
            out[f"voice_{n}_cpu_per_frame_le_coturn"] = (
                None if ours is None else ours <= theirs)
        elif coturn_valid:
            out[f"voice_{n}_cpu_per_frame_le_coturn_best_valid_row"] = (
                None if ours is None else ours <= min(coturn_valid))
        else:
            out[f"voice_{n}_cpu_per_frame_le_coturn"] = None
    per_core = doc["overlay"].get("bulk", {}).get("gbit_s_per_core")
    out["bulk_ge_2_gbit_s_per_core"] = None if per_core is None else per_core >= 2.0
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    fd = raise_fd_limit()
    addrs = Addrs()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    started = time.monotonic()
    doc: dict[str, Any] = {
        "benchmark": "relay",
        "params": {"sessions": args.sessions, "voice_s": args.voice_s, "bulk_s": args.bulk_s,
                   "frame_bytes": FRAME, "fps_per_direction": FPS,
                   "voice_direction": "both: a session is a call, 50 frames/s each way"},
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "loadavg": os.getloadavg(), "fd_limit": fd,
                        "loop": type(asyncio.get_running_loop()).__module__,
                        "workdir": str(workdir)},
    }
    doc["overlay"] = await run_overlay(args, addrs, workdir)
    if args.no_coturn:
        doc["coturn"] = {"error": "skipped (--no-coturn)"}
    else:
        doc["coturn"] = await asyncio.to_thread(run_coturn, args, addrs, workdir)
    doc["targets"] = targets(doc, args.sessions)
    doc["run_s"] = round(time.monotonic() - started, 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.relay", description=__doc__.split(
        "\n")[0])
    p.add_argument("--quick", action="store_true", help="1 and 50 sessions, 3 s, bulk 2 s")
    p.add_argument("--sessions", default=None, help="comma list (default 1,100,1000)")
    p.add_argument("--voice-s", type=float, default=None)
    p.add_argument("--bulk-s", type=float, default=None)
    p.add_argument("--no-coturn", action="store_true")
    p.add_argument("--coturn-max-sessions", type=int, default=COTURN_MAX_SESSIONS,
                   help="largest voice run driven through coturn (default %(default)s)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    q = args.quick
    args.sessions = [int(x) for x in (args.sessions or ("1,50" if q else "1,100,1000")).split(",")]
    args.voice_s = args.voice_s or (3.0 if q else 10.0)
    args.bulk_s = args.bulk_s or (2.0 if q else 5.0)
    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    doc = asyncio.run(amain(args))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print(table(doc, args.sessions), file=sys.stderr)
    print(json.dumps(doc["targets"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

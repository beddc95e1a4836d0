"""Relay benchmark: forwarded throughput and CPU per frame / per Mbit/s, overlay vs coturn.

``python -m tools.bench.relay [--quick] [--sessions 1,100,1000] [--voice-s 10] [--bulk-s 5]
[--no-coturn] [--no-datagram] [--out FILE]``

The last phase (``--no-datagram`` to skip) is the datagram relay's
(:mod:`tools.bench.relay_datagram`, its document under ``"datagram"``): the same call counts
as UDP calls through the supernode's datagram relay and through coturn's UDP relaying (driven
by the bench's TURN client, and by ``turnutils_uclient`` without ``-T`` up to
``--coturn-max-sessions`` calls: the ``uclient_calls_N`` rows), CPU
per datagram and the one-way latency each adds, and ``targets`` gains
``datagram_calls_N_cpu_per_datagram_le_coturn``.

Overlay side: one real ``overlay bootstrap`` and one ``overlay supernode`` process on loopback
(``127.A.B.*``, A.B random per run), the supernode with a relay budget that never throttles
(``--relay-budget 100Gbit --relay-session-cap 50Gbit --relay-max-sessions 2000``, and per-IP,
per-/24 and per-key relay limits the bench's sessions fit; every caller's hello carries a
voucher signed by two throwaway keys, made with the supernode's key from its state dir) but with the
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
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from overlay.core.identity import Identity
from overlay.dht import DHTConfig
from overlay.relay.protocol import (
    REASON_UNKNOWN_TOKEN,
    ROLE_CALLEE,
    ROLE_CALLER,
    TOKEN_BYTES,
    decode_status,
    encode_hello,
)
from overlay.relay.voucher import Voucher, statement_for
from tests.helpers.daemons import Daemon, wait_ready
from tools.bench import relay_datagram
from tools.bench.common import emit_json
from tools.bench.procstat import cpu_pct, raise_fd_limit, sched_sample
from tools.bench.relay_common import FPS, FRAME, VALID_SHARE, Addrs, cpu_stats, log
from tools.bench.relay_coturn import COTURN_MAX_SESSIONS, run_coturn

PORT = 4300
HTTP_PORT = 8300
SESSIONS_PER_CALLER_IP = 8
#: rate each voice half asks for (0 would reserve the whole 50 Gbit/s session cap)
VOICE_RATE_BPS = 10_000_000
BULK_CHUNK = 256 * 1024
BULK_SESSION_BYTES = 960 * 2**20


#: the relay's node key by host (its key file is made before it starts): vouchers name it
RELAY_KEYS: dict[str, bytes] = {}
#: two throwaway keys sign every bench voucher (the supernode is started with per-key,
#: per-IP and per-/24 limits that the bench's thousands of sessions from a few /24s fit)
_SIGNERS = (Identity.generate(), Identity.generate())


def hello(host: str, token: bytes, role: int, rate: int) -> bytes:
    """A hello; a caller's carries a voucher for ``host``'s relay."""
    if role != ROLE_CALLER:
        return encode_hello(role, token, rate)
    a, b = _SIGNERS
    st = statement_for(RELAY_KEYS[host], token, int(time.time()) + 600, a.public_key,
                       b.public_key)
    return encode_hello(role, token, rate, Voucher(st, st.sign(a), st.sign(b)).to_bytes())


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
    first = hello(host, token, role, VOICE_RATE_BPS)
    while True:
        _, proto = await loop.create_connection(
            lambda: VoiceProto(first), host, PORT, local_addr=(source, 0))
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


async def send_frames(pairs: list[tuple[VoiceProto, VoiceProto]], seconds: float
                      ) -> tuple[int, int, float]:
    """One frame on both halves of every session each 1/FPS s for ``seconds``:
    (frames sent, late ticks, seconds spent sending)."""
    frame = os.urandom(FRAME)
    writers = [half.transport for pair in pairs for half in pair]
    loop = asyncio.get_running_loop()
    ticks_total = int(seconds * FPS)
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
    return ticks * len(writers), late, loop.time() - start


async def wait_delivered(receivers: list[VoiceProto], rx0: int, nbytes: int) -> None:
    """Wait (<= 3 s) until the receivers got ``nbytes`` more than ``rx0``."""
    for _ in range(300):
        if sum(r.rx for r in receivers) - rx0 >= nbytes:
            return
        await asyncio.sleep(0.01)


async def voice_phase(relay_pid: int, addrs: Addrs, n: int, seconds: float,
                      idle_pct: float | None = None) -> dict[str, Any]:
    """N calls through the relay for ``seconds``; CPU per frame forwarded."""
    callers, callees = addrs.phase_ips()
    t0 = time.monotonic()
    pairs = await pair_sessions(addrs.supernode, n, callers, callees)
    pair_s = time.monotonic() - t0
    receivers = [half for pair in pairs for half in pair]
    rx0 = sum(r.rx for r in receivers)
    before = sched_sample(relay_pid)
    sent, late, send_s = await send_frames(pairs, seconds)
    await wait_delivered(receivers, rx0, sent * FRAME)  # what is still in flight
    after = sched_sample(relay_pid)
    got = sum(r.rx for r in receivers) - rx0
    for half in receivers:
        if half.transport is not None:
            half.transport.abort()
    out = {"sessions": n, "direction": "both (a call: caller<->callee)", "frame_bytes": FRAME,
           "fps_per_direction": FPS, "pair_s": round(pair_s, 2),
           "frames_sent": sent, "frames_received": got // FRAME,
           "offered_fps": len(receivers) * FPS, "achieved_fps": round(got / FRAME / send_s, 1),
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
    a.sendall(hello(host, token, ROLE_CALLER, 0))
    deadline = time.monotonic() + 10
    while True:
        time.sleep(0.02)
        b = socket.create_connection((host, PORT), timeout=10, source_address=(src_b, 0))
        b.sendall(hello(host, token, ROLE_CALLEE, 0))
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


def _send_until(sock: socket.socket, chunk: bytes, stop_at: float) -> None:
    """Write ``chunk`` after ``chunk`` until the session's byte limit or ``stop_at``."""
    sent = 0
    with contextlib.suppress(OSError):
        while sent < BULK_SESSION_BYTES and time.monotonic() < stop_at:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)


class _ByteCounter:
    """Bytes received over every bulk session (receiver threads add to it)."""

    def __init__(self) -> None:
        self.received = 0
        self._lock = threading.Lock()

    def drain(self, sock: socket.socket) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        with contextlib.suppress(OSError):
            while True:
                k = sock.recv_into(view)
                if not k:
                    break
                with self._lock:
                    self.received += k


def _bulk_session(host: str, src_a: str, src_b: str, chunk: bytes, stop_at: float,
                  counter: _ByteCounter) -> None:
    """One paired session: a sender thread on the caller, a receiver thread on the callee."""
    a, b = _bulk_pair(host, src_a, src_b)
    a.settimeout(None)
    b.settimeout(None)
    threads = [threading.Thread(target=_send_until, args=(a, chunk, stop_at)),
               threading.Thread(target=counter.drain, args=(b,))]
    for t in threads:
        t.start()
    threads[0].join()
    threads[1].join(timeout=5)
    b.shutdown(socket.SHUT_WR) if threads[1].is_alive() else None
    threads[1].join(timeout=2)
    a.close()
    b.close()


def bulk_run(host: str, callers: str, callees: str, seconds: float,
             relay_pid: int) -> dict[str, Any]:
    """Caller -> callee as fast as one sender writes, for ``seconds`` (a new session when one
    reaches its byte limit); Gbit/s per core of relay CPU."""
    chunk = os.urandom(BULK_CHUNK)
    stop_at = time.monotonic() + seconds
    counter = _ByteCounter()
    sessions = 0
    before = sched_sample(relay_pid)
    while time.monotonic() < stop_at - 0.2:
        sessions += 1
        _bulk_session(host, f"{callers}.{sessions}", f"{callees}.{sessions}", chunk, stop_at,
                      counter)
    after = sched_sample(relay_pid)
    received = counter.received
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
                 "--relay-session-bytes", "1G", "--relay-max-sessions-per-ip", "20000",
                 "--relay-max-sessions-per-subnet", "20000", "--relay-subnet-share", "1",
                 "--relay-max-sessions-per-key", "20000",
                 "--max-conns-per-ip", "20000", "--max-conns-per-subnet", "20000"],
                workdir / "supernode.log", name="supernode", log_json=False,
                http=f"{addrs.supernode}:{HTTP_PORT}")
    (workdir / "sn").mkdir(parents=True, exist_ok=True)
    # a public node's key must solve the DHT's id puzzle (the supernode refuses one that does not)
    RELAY_KEYS[addrs.supernode] = Identity.load_or_create(
        workdir / "sn" / "node.key", DHTConfig().id_puzzle_bits).public_key
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
    if args.datagram:  # calls through the UDP relays, next to coturn's (relay_datagram)
        doc["datagram"] = await relay_datagram.amain(relay_datagram.parser().parse_args(
            ["--calls", ",".join(map(str, args.sessions)), "--seconds", str(args.voice_s),
             "--coturn-max-calls", str(args.coturn_max_sessions),
             *(["--no-coturn"] if args.no_coturn else [])]))
        doc["targets"].update({f"datagram_{k}": v
                               for k, v in relay_datagram.le_coturn(doc["datagram"]).items()})
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
    p.add_argument("--datagram", action=argparse.BooleanOptionalAction, default=True,
                   help="then the datagram phase: the same call counts through overlay's UDP "
                        "relay and coturn's UDP relaying (tools.bench.relay_datagram, JSON "
                        "under \"datagram\")")
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
    emit_json(doc, args.out)
    print(table(doc, args.sessions), file=sys.stderr)
    print(json.dumps(doc["targets"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Datagram relay benchmark (issue 15): CPU per forwarded voice datagram and the one-way
latency the relay adds, overlay's UDP relay vs coturn's UDP relaying.

``python -m tools.bench.relay_datagram [--calls 1,100,1000] [--seconds 10] [--no-coturn]
[--out FILE]``

Overlay side: one ``overlay bootstrap`` and one ``overlay supernode --relay-udp-port`` process
on loopback (``127.A.B.*``), relay limits the bench's sessions fit, the budget accounting on.
For N calls: 2N UDP sockets (callers and callees on two fresh /24s) bind at the relay the way
a client does (:func:`overlay.call.udp_io.bind_relay`: ALLOCATE, CHALLENGE, ALLOCATE with
the cookie; the caller's hello carries a voucher), then one shared 20 ms timer sends one
160-byte datagram from every socket through the relay for ``--seconds``: a call, 50
datagrams/s each way. Each datagram carries its send time (``perf_counter_ns``, one process,
one clock), so the receiver has its one-way delay. The same sockets then send straight to
each other for the same time (``direct``): ``added_ms_p50/p99`` = relayed minus direct
percentiles, the relay's share of the delay. CPU is the supernode's (``/proc`` sched time)
over the relayed window, per forwarded datagram.

coturn side (``--no-coturn`` to skip; ``apt-get install coturn`` when missing): the same
``turnserver`` as :mod:`tools.bench.relay`, driven by ``turnutils_uclient -y`` (UDP
allocations, client to client through the relay; no ``-T``): one ``-m 2 -l 160 -z 20``
process per call.

The load generator is one Python process: beyond a few hundred calls it, not the relay,
sets the pace; a row that delivered < 95 % of the offered datagrams is marked invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from overlay.call.udp_io import CallSocket, bind_relay
from overlay.core.identity import Identity
from overlay.dht import DHTConfig
from overlay.relay.protocol import ROLE_CALLEE, ROLE_CALLER, encode_hello
from overlay.relay.voucher import Voucher, statement_for
from tests.helpers.daemons import Daemon, wait_ready
from tools.bench.common import emit_json
from tools.bench.procstat import cpu_pct, raise_fd_limit, sched_sample
from tools.bench.relay_common import FPS, FRAME, VALID_SHARE, Addrs, cpu_stats, log

PORT = 4320
UDP_PORT = 4321
HTTP_PORT = 8320
RATE_BPS = 2 * FRAME * 8 * FPS
_STAMP = struct.Struct(">Q")
_SIGNERS = (Identity.generate(), Identity.generate())


class BenchSocket(CallSocket):
    """A call socket that timestamps what it sends and measures what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.delays_ns: list[int] = []
        self.rx = 0

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if data[:4] == b"OVRD":
            super().datagram_received(data, addr)
            return
        if len(data) == FRAME:
            self.rx += 1
            self.delays_ns.append(time.perf_counter_ns() - _STAMP.unpack_from(data)[0])


def _voucher(relay_key: bytes, token: bytes) -> bytes:
    a, b = _SIGNERS
    st = statement_for(relay_key, token, int(time.time()) + 600, a.public_key, b.public_key)
    return Voucher(st, st.sign(a), st.sign(b)).to_bytes()


async def _open(host: str) -> BenchSocket:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(BenchSocket, local_addr=(host, 0))
    return proto


async def pair_calls(relay: tuple[str, int], relay_key: bytes, n: int, callers: str,
                     callees: str) -> list[tuple[BenchSocket, BenchSocket]]:
    pairs = []
    for i in range(n):
        a = await _open(f"{callers}.{1 + i % 250}")
        b = await _open(f"{callees}.{1 + i % 250}")
        token = Identity.generate().public_key  # 32 random bytes
        caller = asyncio.ensure_future(bind_relay(
            a, relay, encode_hello(ROLE_CALLER, token, RATE_BPS, _voucher(relay_key, token))))
        await asyncio.sleep(0.01)  # the caller's ALLOCATE first (the callee retries anyway)
        for _ in range(50):
            try:
                await bind_relay(b, relay, encode_hello(ROLE_CALLEE, token, RATE_BPS), 5.0)
                break
            except Exception as exc:  # "unknown token": the caller is not there yet
                if "unknown token" not in str(exc):
                    raise
                await asyncio.sleep(0.02)
        await caller
        pairs.append((a, b))
    return pairs


async def send_phase(pairs: list[tuple[BenchSocket, BenchSocket]], seconds: float,
                     to: dict[int, tuple[str, int]]) -> tuple[int, float]:
    """One 20 ms timer; every socket sends one stamped datagram to ``to[id(socket)]``."""
    filler = bytes(FRAME - _STAMP.size)
    sent, start = 0, time.monotonic()
    tick = 0
    while (now := time.monotonic()) < start + seconds:
        for a, b in pairs:
            for sock in (a, b):
                sock.send(_STAMP.pack(time.perf_counter_ns()) + filler, to[id(sock)])
                sent += 1
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * 0.02 - time.monotonic()))
    del now
    return sent, time.monotonic() - start


def _pct(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)


async def calls_phase(pid: int, relay: tuple[str, int], relay_key: bytes, addrs: Addrs, n: int,
                      seconds: float, idle_pct: float) -> dict[str, Any]:
    callers, callees = addrs.phase_ips()
    t0 = time.monotonic()
    pairs = await pair_calls(relay, relay_key, n, callers, callees)
    pair_s = time.monotonic() - t0
    socks = [s for p in pairs for s in p]
    via_relay = {id(s): relay for s in socks}
    direct = {id(a): b.local for a, b in pairs} | {id(b): a.local for a, b in pairs}
    before = sched_sample(pid)
    sent, wall = await send_phase(pairs, seconds, via_relay)
    await _drained(socks, sent)
    after = sched_sample(pid)
    got = sum(s.rx for s in socks)
    relayed = [d for s in socks for d in s.delays_ns]
    for s in socks:
        s.delays_ns, s.rx = [], 0
    await send_phase(pairs, min(seconds, 5.0), direct)
    await asyncio.sleep(0.2)  # in flight on loopback: well under 1 ms
    straight = [d for s in socks for d in s.delays_ns]
    for s in socks:
        s.close()
    out: dict[str, Any] = {
        "calls": n, "datagram_bytes": FRAME, "per_direction_fps": FPS, "pair_s": round(pair_s, 2),
        "datagrams_sent": sent, "datagrams_received": got, "offered_dps": 2 * n * FPS,
        "achieved_dps": round(got / wall, 1), "valid": got >= VALID_SHARE * sent,
        "one_way_ms_p50": _pct(relayed, 0.5), "one_way_ms_p99": _pct(relayed, 0.99),
        "direct_ms_p50": _pct(straight, 0.5), "direct_ms_p99": _pct(straight, 0.99),
        **cpu_stats(before, after, got, got * FRAME)}
    out["cpu_us_per_datagram"] = out.pop("cpu_us_per_frame")
    if got:
        net = max(0.0, out["cpu_s"] - idle_pct / 100 * out["wall_s"])
        out["cpu_us_per_datagram_net_of_idle"] = round(1e6 * net / got, 2)
    for q in ("p50", "p99"):
        r, d = out[f"one_way_ms_{q}"], out[f"direct_ms_{q}"]
        out[f"added_ms_{q}"] = round(r - d, 3) if r is not None and d is not None else None
    return out


async def _drained(socks: list[BenchSocket], sent: int) -> None:
    """Wait (<= 3 s) for what is still in flight."""
    for _ in range(300):
        if sum(s.rx for s in socks) >= sent:
            return
        await asyncio.sleep(0.01)


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
                 "--relay-udp-port", str(UDP_PORT), "--relay-budget", "10Gbit",
                 "--relay-max-sessions", "2000", "--relay-max-sessions-per-ip", "20000",
                 "--relay-max-sessions-per-subnet", "20000", "--relay-subnet-share", "1",
                 "--relay-max-sessions-per-key", "20000"],
                workdir / "supernode.log", name="supernode", log_json=False,
                http=f"{addrs.supernode}:{HTTP_PORT}")
    (workdir / "sn").mkdir(parents=True, exist_ok=True)
    relay_key = Identity.load_or_create(workdir / "sn" / "node.key",
                                        DHTConfig().id_puzzle_bits).public_key
    relay = (addrs.supernode, UDP_PORT)
    out: dict[str, Any] = {"relay": f"{relay[0]}:{relay[1]}/udp"}
    try:
        boot.start()
        await wait_ready(boot.http, boot, 30.0)
        sn.start()
        await wait_ready(sn.http, sn, 30.0)
        idle0 = sched_sample(sn.pid)
        await asyncio.sleep(2.0)  # the supernode's own background work, as a baseline
        out["idle_cpu_pct"] = cpu_pct(idle0, sched_sample(sn.pid))
        for n in args.calls:
            log(f"overlay datagram relay x{n}")
            try:
                out[f"calls_{n}"] = await asyncio.wait_for(
                    calls_phase(sn.pid, relay, relay_key, addrs, n, args.seconds,
                                out["idle_cpu_pct"]),
                    args.seconds * 2 + 60 + n * 0.1)
            except Exception as exc:
                out[f"calls_{n}"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        sn.kill()
        boot.kill()
    return out


def run_coturn_udp(args: argparse.Namespace, addrs: Addrs, workdir: Path) -> dict[str, Any]:
    from tools.bench.relay_coturn import (
        coturn_version,
        coturn_voice_phase,
        ensure_coturn,
        start_turnserver,
        wait_listening,
    )
    why = ensure_coturn()
    if why is not None:
        return {"error": why}
    turn, cmd = start_turnserver(addrs.turn, workdir)
    out: dict[str, Any] = {"version": coturn_version(), "server": " ".join(cmd)}
    try:
        wait_listening(turn, addrs.turn, workdir)
        for n in args.calls:
            if n > args.coturn_max_calls:
                out[f"calls_{n}"] = {"calls": n, "skipped": True}
                continue
            log(f"coturn udp x{n}")
            out[f"calls_{n}"] = coturn_voice_phase(turn.pid, addrs.turn, workdir, n,
                                                   args.seconds, udp=True)
    finally:
        turn.kill()
        with contextlib.suppress(Exception):
            turn.wait(5)
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    addrs = Addrs()
    with tempfile.TemporaryDirectory(prefix="relay-dgram-bench-") as tmp:
        workdir = Path(tmp)
        doc: dict[str, Any] = {"bench": "relay_datagram", "seconds": args.seconds,
                               "overlay": await run_overlay(args, addrs, workdir)}
        if not args.no_coturn:
            doc["coturn"] = await asyncio.to_thread(run_coturn_udp, args, addrs, workdir)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.relay_datagram")
    p.add_argument("--calls", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 100, 1000])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--no-coturn", action="store_true")
    p.add_argument("--coturn-max-calls", type=int, default=100)
    p.add_argument("--out")
    args = p.parse_args(argv)
    doc = asyncio.run(amain(args))
    emit_json(doc, args.out)
    for side in ("overlay", "coturn"):
        for key, row in doc.get(side, {}).items():
            if key.startswith("calls_"):
                log(f"{side} {key}: " + json.dumps({k: row.get(k) for k in (
                    "valid", "achieved_dps", "cpu_us_per_datagram",
                    "cpu_us_per_datagram_net_of_idle", "cpu_us_per_frame",
                    "added_ms_p50", "added_ms_p99", "error")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

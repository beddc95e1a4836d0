"""Datagram relay benchmark (issue 15): CPU per forwarded voice datagram and the one-way
latency the relay adds, overlay's UDP relay vs coturn's UDP relaying.

``python -m tools.bench.relay_datagram [--calls 1,100,1000] [--seconds 10] [--no-coturn]
[--no-fast-path] [--out FILE]``

Overlay side: one ``overlay bootstrap`` and one ``overlay supernode --relay-udp-port`` process
on loopback (``127.A.B.*``), relay limits the bench's sessions fit, the budget accounting on.
For N calls: 2N UDP sockets
(callers and callees on two fresh /24s) bind at the relay the way a client does
(:func:`overlay.call.udp_io.bind_relay`: ALLOCATE, CHALLENGE, ALLOCATE with the cookie; the
caller's hello carries a voucher).

coturn side (``--no-coturn`` to skip; ``apt-get install coturn`` when missing): the same
``turnserver`` as :mod:`tools.bench.relay`; N calls are 2N UDP allocations of the bench's own
TURN client (:mod:`tools.bench.relay_datagram_turn`), each ChannelBound to its peer's relayed
address.

Both relays then get the same load from the same generator (:mod:`tools.bench.datagram_load`,
``--procs`` forked workers): every socket sends one 160-byte datagram per interval through
the relay for ``--seconds`` (send times spread over the interval), then straight to its peer
for comparison (``direct``; ``added_ms_p50/p99`` = relayed minus direct percentiles). The
interval is 20 ms (50 datagrams/s each way, a voice call) unless 2N/20 ms would exceed
``--max-offered-dps``: then it is 2N/max (1,000 calls at the default 20,000/s: 100 ms), and
the row says so (``interval_ms``). CPU is the relay process's scheduler time over the
window, per datagram delivered. A row counts (``valid``) when >= 95 % of the offered
datagrams arrived. ``fast_path_sessions``: the supernode's sessions lent to its C fast path
(:mod:`overlay.relay._forwarder`) at the row's end, from its ``/metrics``, earlier rows'
sessions included until their idle timeout (0: forwarding in Python; None: a supernode
without the metric). ``--uclient`` rows (coturn driven by
``turnutils_uclient -y -m 2``, one process per call, at most ``--coturn-max-calls``) are kept
for comparison with earlier runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overlay.call.udp_io import CallSocket, bind_relay, open_call_socket
from overlay.core.identity import Identity
from overlay.dht import DHTConfig
from overlay.relay.protocol import ROLE_CALLEE, ROLE_CALLER, encode_hello
from overlay.relay.voucher import Voucher, statement_for
from tests.helpers.daemons import Daemon, http_status_text, parse_metrics, wait_ready
from tools.bench.common import emit_json
from tools.bench.datagram_load import Call, Leg, run_load
from tools.bench.procstat import ProcSample, cpu_pct, raise_fd_limit, sched_sample
from tools.bench.relay_common import FPS, FRAME, VALID_SHARE, Addrs, cpu_stats, log

PORT = 4320
UDP_PORT = 4321
HTTP_PORT = 8320
RATE_BPS = 2 * FRAME * 8 * FPS
_SIGNERS = (Identity.generate(), Identity.generate())


def _voucher(relay_key: bytes, token: bytes) -> bytes:
    a, b = _SIGNERS
    st = statement_for(relay_key, token, int(time.time()) + 600, a.public_key, b.public_key)
    return Voucher(st, st.sign(a), st.sign(b)).to_bytes()


async def pair_calls(relay: tuple[str, int], relay_key: bytes, n: int, callers: str,
                     callees: str) -> list[tuple[CallSocket, CallSocket]]:
    pairs = []
    for i in range(n):
        a = await open_call_socket(f"{callers}.{1 + i % 250}")
        b = await open_call_socket(f"{callees}.{1 + i % 250}")
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


def udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (the whole
    machine: other processes' drops count too)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def interval_for(n: int, max_dps: float) -> float:
    """20 ms (a voice call), or longer so that 2N legs offer at most ``max_dps``."""
    return max(1 / FPS, 2 * n / max_dps)


def _pct(values: Sequence[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)


def warm_up(calls: list[Call], args: argparse.Namespace) -> None:
    """The row's load for ``--warmup`` s, not measured: every leg heard by the relay again
    after the setup (the overlay relay forwards only to an end heard in the last 10 s)."""
    if args.warmup > 0:
        run_load(calls, interval_for(len(calls), args.max_offered_dps), args.warmup, True,
                 args.procs, nice=args.generator_nice)


def measure_row(pid: int, calls: list[Call], args: argparse.Namespace,
                idle_pct: float) -> dict[str, Any]:
    """The relayed window (relay CPU around it), then the direct one: one row."""
    n = len(calls)
    interval = interval_for(n, args.max_offered_dps)
    samples: list[ProcSample] = []
    rcvbuf_errors = udp_rcvbuf_errors()
    load_before = os.getloadavg()[0]
    relayed = run_load(calls, interval, args.seconds, True, args.procs,
                       on_start=lambda: samples.append(sched_sample(pid)),
                       nice=args.generator_nice)
    after = sched_sample(pid)
    rcvbuf_errors = udp_rcvbuf_errors() - rcvbuf_errors
    direct = run_load(calls, interval, min(args.seconds, 5.0), False, args.procs,
                      nice=args.generator_nice)
    got = relayed.received
    out: dict[str, Any] = {
        "calls": n, "datagram_bytes": FRAME, "warmup_s": args.warmup,
        "generator_nice": args.generator_nice, "interval_ms": round(1000 * interval, 3),
        "per_leg_dps": round(1 / interval, 2), "generator_processes": relayed.workers,
        "datagrams_offered": relayed.offered, "datagrams_sent": relayed.sent,
        "datagrams_received": got, "late_sends": relayed.late_sends,
        "udp_rcvbuf_errors_machine_wide": rcvbuf_errors,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "offered_dps": round(2 * n / interval, 1),
        "delivered_fraction": round(got / relayed.offered, 4) if relayed.offered else None,
        "valid": relayed.offered > 0 and got >= VALID_SHARE * relayed.offered,
        "one_way_ms_p50": _pct(relayed.delays_ns, 0.5),
        "one_way_ms_p99": _pct(relayed.delays_ns, 0.99),
        "direct_ms_p50": _pct(direct.delays_ns, 0.5),
        "direct_ms_p99": _pct(direct.delays_ns, 0.99),
        "direct_delivered_fraction": round(direct.received / direct.offered, 4)
        if direct.offered else None,
        **cpu_stats(samples[0], after, got, got * FRAME)}
    out["achieved_dps"] = round(got / args.seconds, 1)  # over the sending window
    out["cpu_us_per_datagram"] = out.pop("cpu_us_per_frame")
    if got:
        net = max(0.0, out["cpu_s"] - idle_pct / 100 * out["wall_s"])
        out["cpu_us_per_datagram_net_of_idle"] = round(1e6 * net / got, 2)
    for q in ("p50", "p99"):
        r, d = out[f"one_way_ms_{q}"], out[f"direct_ms_{q}"]
        out[f"added_ms_{q}"] = round(r - d, 3) if r is not None and d is not None else None
    return out


def _legs(pairs: list[tuple[CallSocket, CallSocket]], relay: tuple[str, int]) -> list[Call]:
    """The bound sockets as plain sockets (duplicated descriptors; the asyncio transports
    are closed, the bindings at the relay stay: same address and port)."""
    calls = []
    for a, b in pairs:
        sa, sb = (_plain(x) for x in (a, b))
        calls.append((Leg(sa, relay, b"", b.local), Leg(sb, relay, b"", a.local)))
        a.close()
        b.close()
    return calls


def _plain(sock: CallSocket) -> socket.socket:
    assert sock.transport is not None
    fd = sock.transport.get_extra_info("socket").fileno()
    plain = socket.socket(fileno=os.dup(fd))
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
    return plain


async def _relay_drops(http: str) -> dict[str, float]:
    """The supernode's ``overlay_relay_datagrams_dropped`` counters by reason."""
    _, text = await http_status_text(f"http://{http}/metrics")
    return {k.partition("reason=")[2].strip('"}'): v for k, v in parse_metrics(text).items()
            if k.startswith("overlay_relay_datagrams_dropped")}


async def calls_phase(pid: int, http: str, relay: tuple[str, int], relay_key: bytes,
                      addrs: Addrs, n: int, args: argparse.Namespace,
                      idle_pct: float) -> dict[str, Any]:
    callers, callees = addrs.phase_ips()
    t0 = time.monotonic()
    pairs = await pair_calls(relay, relay_key, n, callers, callees)
    pair_s = time.monotonic() - t0
    calls = _legs(pairs, relay)
    try:
        warm_up(calls, args)
        dropped = await _relay_drops(http)
        row = measure_row(pid, calls, args, idle_pct)
        after = await _relay_drops(http)
        _, text = await http_status_text(f"http://{http}/metrics")
        lent = parse_metrics(text).get("overlay_relay_call_fast_path_sessions")
        return {**row, "pair_s": round(pair_s, 2), "fast_path_sessions": lent,
                "relay_dropped": {k: v - dropped.get(k, 0) for k, v in after.items()
                                  if v - dropped.get(k, 0)}}
    finally:
        for call in calls:
            for leg in call:
                leg.sock.close()


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
                 "--relay-max-sessions-per-key", "20000",
                 *(["--no-relay-fast-path"] if args.no_fast_path else [])],
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
                    calls_phase(sn.pid, f"{addrs.supernode}:{HTTP_PORT}", relay, relay_key,
                                addrs, n, args, out["idle_cpu_pct"]),
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
    from tools.bench.relay_datagram_turn import close_calls, turn_calls
    why = ensure_coturn()
    if why is not None:
        return {"error": why}
    turn, cmd = start_turnserver(addrs.turn, workdir)
    out: dict[str, Any] = {"version": coturn_version(), "server": " ".join(cmd),
                           "client": "tools.bench.turn_client: UDP allocations, ChannelData"}
    try:
        wait_listening(turn, addrs.turn, workdir)
        idle0 = sched_sample(turn.pid)
        time.sleep(2.0)
        out["idle_cpu_pct"] = cpu_pct(idle0, sched_sample(turn.pid))
        for n in args.calls:
            log(f"coturn udp x{n} (bench generator)")
            callers, callees = addrs.phase_ips()
            try:
                t0 = time.monotonic()
                calls, allocs = turn_calls(addrs.turn, n, callers, callees)
                setup_s = round(time.monotonic() - t0, 2)
                try:
                    warm_up(calls, args)
                    out[f"calls_{n}"] = {**measure_row(turn.pid, calls, args,
                                                       out["idle_cpu_pct"]),
                                         "pair_s": setup_s}
                finally:
                    close_calls(allocs)
            except Exception as exc:
                out[f"calls_{n}"] = {"error": f"{type(exc).__name__}: {exc}"}
            if args.uclient and n <= args.coturn_max_calls:
                log(f"coturn udp x{n} (turnutils_uclient)")
                out[f"uclient_calls_{n}"] = coturn_voice_phase(turn.pid, addrs.turn, workdir,
                                                               n, args.seconds, udp=True)
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


def le_coturn(doc: dict[str, Any]) -> dict[str, bool | None]:
    """Per row: overlay's CPU per datagram at most coturn's (None: a row missing or invalid)."""
    out: dict[str, bool | None] = {}
    for key, ours in doc.get("overlay", {}).items():
        theirs = doc.get("coturn", {}).get(key)
        if not key.startswith("calls_") or not isinstance(theirs, dict):
            continue
        valid = ours.get("valid") and theirs.get("valid")
        out[f"{key}_cpu_per_datagram_le_coturn"] = (
            ours["cpu_us_per_datagram"] <= theirs["cpu_us_per_datagram"] if valid else None)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench.relay_datagram")
    p.add_argument("--calls", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 100, 1000])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--no-coturn", action="store_true")
    p.add_argument("--coturn-max-calls", type=int, default=100,
                   help="uclient rows only up to this many calls (one process per call)")
    p.add_argument("--uclient", action=argparse.BooleanOptionalAction, default=True,
                   help="also drive coturn with turnutils_uclient (<= --coturn-max-calls)")
    p.add_argument("--max-offered-dps", type=float, default=20000.0,
                   help="longer send interval than 20 ms where 2N legs would offer more")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--generator-nice", type=int, default=10,
                   help="nice increment of the generator's workers (the relay under test "
                        "goes first; a generator that falls behind shows as late/unsent)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of the same load, not measured, before each row's window")
    p.add_argument("--no-fast-path", action="store_true",
                   help="run the supernode with --no-relay-fast-path (every datagram in Python)")
    p.add_argument("--out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    doc = asyncio.run(amain(args))
    doc["targets"] = le_coturn(doc)
    emit_json(doc, args.out)
    for side in ("overlay", "coturn"):
        for key, row in doc.get(side, {}).items():
            if "calls_" in key:
                log(f"{side} {key}: " + json.dumps({k: row.get(k) for k in (
                    "valid", "interval_ms", "delivered_fraction", "achieved_dps",
                    "cpu_us_per_datagram",
                    "cpu_us_per_datagram_net_of_idle", "cpu_us_per_frame",
                    "added_ms_p50", "added_ms_p99", "error")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

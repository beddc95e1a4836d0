"""The relay benchmark's coturn side: ``turnserver`` driven by ``turnutils_uclient -T``.

See :mod:`tools.bench.relay` for what is measured; installs ``coturn`` with apt-get when
``turnserver`` is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.helpers.daemons import track
from tools.bench.procstat import ProcSample, cpu_pct, sched_sample
from tools.bench.relay_common import FPS, FRAME, VALID_SHARE, Addrs, cpu_stats, log

TURN_PORT = 3478
TURN_USER, TURN_PASS, TURN_REALM = "bench", "benchpw", "bench.local"
#: coturn voice runs one uclient process per call (see coturn_voice_phase); each takes ~2 % of
#: a core by itself, so beyond ~100 calls on 2 cores the generator, not coturn, is measured
COTURN_MAX_SESSIONS = 100


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


def _start_uclients(cmd: list[str], logs: list[Path],
                    procs: list[subprocess.Popen[bytes]]) -> None:
    """One uclient process per log file, in bursts of 25, appended to ``procs``."""
    for i, logf in enumerate(logs):
        with open(logf, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        procs.append(proc)
        track(proc)
        if i % 25 == 24:
            time.sleep(0.05)  # uclient allocates in ~1 s; a burst of 1000 is fine, slower


def _wait_until_sending(logs: list[Path], procs: list[subprocess.Popen[bytes]],
                        n: int) -> tuple[int, int]:
    """Wait (<= 30 s + 30 ms per call) until every process reports traffic:
    (processes sending, processes exited)."""
    deadline = time.monotonic() + 30 + n * 0.03
    while True:
        started = sum(1 for f in logs if (_last_progress(f) or (0, 0))[0] > 0)
        dead = sum(1 for p in procs if p.poll() is not None)
        if started == n or time.monotonic() > deadline:
            return started, dead
        time.sleep(0.2)


def _voice_window(turn_pid: int, logs: list[Path], seconds: float
                  ) -> tuple[ProcSample, ProcSample, int, int]:
    """The measuring window: coturn's CPU around it, (frames, bytes) received in it.

    Both ends of the window sit just after a progress line of process 0: exact for one
    call; with many, the other processes' lines are as stale at both ends on average."""
    _next_progress_line(logs[0])
    c0 = [_last_progress(f) or (0, 0) for f in logs]
    before = sched_sample(turn_pid)
    time.sleep(max(0.0, seconds - 0.5))  # the measuring window itself
    _next_progress_line(logs[0])
    after = sched_sample(turn_pid)
    c1 = [_last_progress(f) or (0, 0) for f in logs]
    frames = sum(b[0] - a[0] for a, b in zip(c0, c1, strict=True))
    nbytes = sum(b[1] - a[1] for a, b in zip(c0, c1, strict=True))
    return before, after, frames, nbytes


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def coturn_voice_phase(turn_pid: int, host: str, workdir: Path, n: int,
                       seconds: float, udp: bool = False) -> dict[str, Any]:
    """N calls through coturn: one ``turnutils_uclient -T -m 2`` process per call.

    One process per call because uclient's TCP mode connects every client socket to every
    other one's relay address (m*(m-1) data connections: -m 200 made ~10k and ran the server
    out of descriptors). A process sends 160-byte messages every 20 ms from each of its two
    sockets to the other through the relay: 50 frames/s each way, like ours.
    The window starts once every process prints a progress line with traffic (setup left out)
    and lasts ``seconds``; frames = the sum over processes of tot_recv_msgs growth in the
    window, from uclient's once-a-second progress lines (each end equally up to 1 s old)."""
    count = int((seconds + 60) * FPS)  # outlasts setup and window; stopped after the window
    # -T: RFC 6062 TCP relaying (implies -y); udp: UDP allocations, client to client (-y)
    mode = "-y" if udp else "-T"
    cmd = [*LINE_BUFFERED, "turnutils_uclient", mode, "-l", str(FRAME), "-m", "2", "-n", str(count),
           "-z", "20", "-u", TURN_USER, "-w", TURN_PASS, "-p", str(TURN_PORT),
           "-e", host, host]
    logs = [workdir / f"uclient_voice{'_udp' if udp else ''}{n}_{i}.log" for i in range(n)]
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"sessions": n, "uclient_processes": n,
                           "command": " ".join(cmd), "offered_fps": 2 * n * FPS}
    try:
        t0 = time.monotonic()
        _start_uclients(cmd, logs, procs)
        started, dead = _wait_until_sending(logs, procs, n)
        out["setup_s"] = round(time.monotonic() - t0, 2)
        out["sending_at_window_start"] = started
        out["exited_before_window"] = dead
        if started == 0:
            out["error"] = f"no uclient process was sending after {out['setup_s']} s"
            return out
        before, after, frames, nbytes = _voice_window(turn_pid, logs, seconds)
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
        _kill_all(procs)
    return out


def start_turnserver(host: str, workdir: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """``turnserver`` on ``host`` with long-term credentials; waits (<= 10 s) until it
    accepts TCP connections."""
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
    return turn, cmd


def wait_listening(turn: subprocess.Popen[bytes], host: str, workdir: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if turn.poll() is not None:
            raise RuntimeError("turnserver exited: " + (
                workdir / "turnserver.log").read_text(errors="replace")[-400:])
        with contextlib.suppress(OSError), socket.create_connection((host, TURN_PORT), 0.5):
            break
        time.sleep(0.1)


def skipped_voice_row(n: int, max_sessions: int) -> dict[str, Any]:
    return {"sessions": n, "skipped": True,
            "error": f"not run: more than --coturn-max-sessions "
                     f"{max_sessions} calls; turnutils_uclient needs one "
                     f"process per call here (~2 % of a core each), so {n} would "
                     f"measure the starved load generator (at 300 calls: 45 % of the "
                     f"offered frames, coalesced)"}


def coturn_phases(args: argparse.Namespace, turn_pid: int, host: str, workdir: Path,
                  out: dict[str, Any]) -> None:
    """Idle CPU, the voice rows and the bulk row, into ``out``."""
    time.sleep(1.0)
    a = sched_sample(turn_pid)
    time.sleep(2.0)
    b = sched_sample(turn_pid)
    out["idle_cpu_pct"] = cpu_pct(a, b)
    for n in args.sessions:
        if n > args.coturn_max_sessions:
            out[f"voice_{n}"] = skipped_voice_row(n, args.coturn_max_sessions)
            continue
        log(f"coturn voice x{n}")
        out[f"voice_{n}"] = coturn_voice_phase(turn_pid, host, workdir, n, args.voice_s)
        r = out[f"voice_{n}"]
        if r.get("frames"):
            net = max(0.0, r["cpu_s"] - out["idle_cpu_pct"] / 100 * r["wall_s"])
            r["cpu_us_per_frame_net_of_idle"] = round(1e6 * net / r["frames"], 2)
    log("coturn bulk")
    out["bulk"] = coturn_bulk_phase(turn_pid, host, workdir, args.bulk_s)


def run_coturn(args: argparse.Namespace, addrs: Addrs, workdir: Path) -> dict[str, Any]:
    why = ensure_coturn()
    if why:
        return {"error": why}
    host = addrs.turn
    turn, cmd = start_turnserver(host, workdir)
    out: dict[str, Any] = {"version": coturn_version(), "server": f"{host}:{TURN_PORT}",
                           "command": " ".join(cmd)}
    try:
        wait_listening(turn, host, workdir)
        coturn_phases(args, turn.pid, host, workdir, out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if turn.poll() is None:
            turn.kill()
            turn.wait(5)
    return out

"""CPU time and memory of a process, from /proc, for the benchmarks."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    at: float
    cpu_s: float
    user_s: float
    sys_s: float
    rss_kib: int
    hwm_kib: int
    anon_kib: int


def proc_sample(pid: int) -> ProcSample:
    """CPU seconds (utime + stime) and memory of ``pid`` from /proc."""
    at = time.monotonic()
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    user_s, sys_s = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14, 15
    mem: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                mem[key] = int(value.split()[0])
    return ProcSample(at, user_s + sys_s, user_s, sys_s, mem.get("VmRSS", 0),
                      mem.get("VmHWM", 0), mem.get("RssAnon", 0))


def cpu_pct(a: ProcSample, b: ProcSample) -> float:
    wall = b.at - a.at
    return round(100.0 * (b.cpu_s - a.cpu_s) / wall, 2) if wall > 0 else 0.0


def cpu_split(a: ProcSample, b: ProcSample) -> dict[str, float]:
    """User and kernel CPU % (on loopback the sender's syscall also runs the receive path)."""
    wall = b.at - a.at
    if wall <= 0:
        return {"user": 0.0, "sys": 0.0}
    return {"user": round(100.0 * (b.user_s - a.user_s) / wall, 2),
            "sys": round(100.0 * (b.sys_s - a.sys_s) / wall, 2)}


async def sample_series(pid: int, seconds: float) -> tuple[ProcSample, ProcSample, list[float]]:
    """CPU % of ``pid`` per second over ``seconds``: (first, last, per-second values)."""
    first = prev = proc_sample(pid)
    series = []
    end = first.at + seconds
    while True:
        await asyncio.sleep(max(0.0, min(1.0, end - time.monotonic())))
        cur = proc_sample(pid)
        series.append(cpu_pct(prev, cur))
        prev = cur
        if cur.at >= end - 0.01:
            return first, cur, series


def sched_cpu_s(pid: int) -> float | None:
    """CPU seconds of every thread of ``pid`` at nanosecond resolution (``se.sum_exec_runtime``
    in /proc/PID/task/TID/sched, in ms), or None where the kernel does not expose it. The
    10 ms ticks of /proc/PID/stat are too coarse for one voice session (~1 ms of CPU a second)."""
    total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":")[1]) / 1000.0
                        break
                else:
                    return None
        except FileNotFoundError:
            continue  # a thread that ended between listdir and open
        except (OSError, ValueError):
            return None
    return total


def sched_sample(pid: int) -> ProcSample:
    """utime/stime split from /proc/PID/stat, total CPU from the scheduler when available."""
    s = proc_sample(pid)
    precise = sched_cpu_s(pid)
    return s if precise is None else dataclasses.replace(s, cpu_s=precise)


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by every process started later)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, hard

"""What the relay benchmark's overlay and coturn sides share: frame shape, addresses, log,
and the CPU figures of one measuring window."""

from __future__ import annotations

import secrets
import sys
import time
from typing import Any

from tools.bench.procstat import ProcSample

FRAME = 160
FPS = 50
#: a voice row counts when it delivered at least this share of the offered frames
VALID_SHARE = 0.95


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


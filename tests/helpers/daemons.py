"""Run ``overlay`` daemons as real processes in tests, and always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.helpers.netutil import wait_for


class Daemon:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "overlay", "--log-json", *self.args],
            stdout=log, stderr=log, env=env,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.args[0]} did not stop on {sig}:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def http_get(url: str) -> tuple[int, object]:
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            body = await resp.json(content_type=None) if resp.status != 500 else None
            return resp.status, body
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return 0, None


async def http_text(url: str) -> str:
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        return await resp.text()


async def wait_ready(http: str, daemon: Daemon, timeout: float = 20) -> None:
    async def ready() -> bool:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited early:\n{daemon.log()}")
        status, _ = await http_get(f"http://{http}/readyz")
        return status == 200

    await wait_for(ready, timeout=timeout, interval=0.1)

"""Run ``overlay`` daemons as real processes, and always stop them.

One :class:`Daemon` serves the process tests, the NAT lab harness
(:mod:`tests.helpers.lab_overlay`, which starts it inside a network namespace through the
lab's ``popen``) and the benchmarks in ``tools/bench``::

    sn = Daemon(["supernode", "--listen", addr, "--http", http], tmp / "sn.log", http=http)
    sn.start()
    await wait_ready(sn.http, sn)
    values = await scrape_metrics(sn)
    sn.terminate()

Every process started here (and any other one passed to :func:`track`) is killed at
interpreter exit if it is still running.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers.netutil import wait_for
from tests.helpers.repo import REPO

#: ``launcher(argv, **popen_kwargs)`` starts a process: :class:`subprocess.Popen` here, or
#: e.g. ``functools.partial(lab.popen, host)`` for a host of the NAT lab.
Launcher = Callable[..., "subprocess.Popen[bytes]"]

_STARTED: list[tuple[subprocess.Popen[Any], bool]] = []


def track(proc: subprocess.Popen[Any], process_group: bool = False) -> None:
    """Kill ``proc`` (its process group with ``process_group``) at exit if still running."""
    _STARTED.append((proc, process_group))


def kill_started() -> None:
    """atexit: kill every tracked process that is still running (ours only)."""
    for proc, group in _STARTED:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


atexit.register(kill_started)


def overlay_argv(args: Sequence[str], log_json: bool = True) -> list[str]:
    """``python -m overlay [--log-json] ARGS`` with this interpreter."""
    return [sys.executable, "-m", "overlay", *(["--log-json"] if log_json else []), *args]


def daemon_env() -> dict[str, str]:
    """This environment, unbuffered, with the repository first on ``PYTHONPATH``."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


@dataclass
class Daemon:
    """An ``overlay`` daemon process, stdout and stderr appended to ``log_path``.

    ``args`` follow ``overlay [--log-json]``. ``http`` is the daemon's ``--http`` address
    (for :func:`wait_ready` and :func:`scrape_metrics`). ``launcher`` starts the process;
    ``process_group`` says it runs in its own process group (the lab's ``popen`` does that),
    so signals go to the whole group.
    """

    args: list[str]
    log_path: Path
    name: str = ""
    http: str | None = None
    role: str = ""  # e.g. "bootstrap", "supernode", "client"
    log_json: bool = True
    launcher: Launcher = subprocess.Popen
    process_group: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.role or self.args[0]

    @property
    def argv(self) -> list[str]:
        return overlay_argv(self.args, self.log_json)

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = self.launcher(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=daemon_env(), cwd=str(REPO))
        track(self.proc, self.process_group)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self) -> bool:
        """Started and no longer running."""
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON log lines (``--log-json``) so far, parsed; other lines are skipped."""
        out = []
        for line in self.log().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    def events(self, *names: str) -> list[dict[str, Any]]:
        """The log entries whose event is one of ``names``."""
        return [e for e in self.log_entries() if e.get("event") in names]

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` (to the process group with ``process_group``) if still running."""
        if not self.alive():
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            if self.process_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def wait_or_kill(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the exit; SIGKILL after that. True if it exited."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.proc.wait()
            return False

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
        """``sig``, then SIGKILL after ``grace_s``."""
        if self.alive():
            self.send_signal(sig)
            self.wait_or_kill(grace_s)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """``sig`` and the exit code; a daemon that does not stop in time fails the test."""
        assert self.proc is not None
        self.send_signal(sig)
        if not self.wait_or_kill(timeout):
            raise AssertionError(f"{self.name} did not stop on {sig}:\n{self.log()}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.send_signal(signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)


# -- HTTP --------------------------------------------------------------------------------------


async def http_fetch(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET ``url``: status and body. Raises on connection errors and timeouts."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) as resp,
    ):
        return resp.status, await resp.text()


async def http_status_text(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """:func:`http_fetch`, with ``(0, "")`` when the daemon does not answer."""
    try:
        return await http_fetch(url, timeout)
    except (TimeoutError, aiohttp.ClientError):
        return 0, ""


async def http_get(url: str, timeout: float = 3.0) -> tuple[int, object]:
    """Status and JSON body (None for a 500 or an empty body); ``(0, None)`` when the daemon
    does not answer or the body is not JSON."""
    status, text = await http_status_text(url, timeout)
    if status in (0, 500) or not text.strip():
        return status, None
    try:
        return status, json.loads(text)
    except ValueError:
        return 0, None


async def http_text(url: str, timeout: float = 3.0) -> str:
    return (await http_fetch(url, timeout))[1]


async def wait_ready(http: str | None, daemon: Daemon, timeout: float = 20.0) -> None:
    """Wait until ``GET /readyz`` on ``http`` (default: the daemon's ``--http``) answers 200;
    a daemon that exits or is not ready in time fails with its log."""
    address = http or daemon.http
    assert address is not None, f"{daemon.name}: no --http address"

    async def ready() -> bool:
        if daemon.exited():
            raise AssertionError(f"{daemon.name} exited early:\n{daemon.log_tail(200)}")
        status, _ = await http_status_text(f"http://{address}/readyz", timeout=1.0)
        return status == 200

    try:
        await wait_for(ready, timeout=timeout, interval=0.1)
    except AssertionError as exc:
        if not daemon.exited():
            raise AssertionError(f"{daemon.name} not ready within {timeout:g} s:\n"
                                 f"{daemon.log_tail()}") from exc
        raise


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition: ``{"name{labels}": value}`` (comments and lines whose value
    is not a number are left out)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


async def scrape_metrics(daemon: Daemon) -> dict[str, float]:
    """``overlay_*`` series from the daemon's ``/metrics``, keyed by ``name{labels}``
    (empty when it does not answer)."""
    status, text = await http_status_text(f"http://{daemon.http}/metrics")
    if status != 200:
        return {}
    return {k: v for k, v in parse_metrics(text).items() if k.startswith("overlay_")}

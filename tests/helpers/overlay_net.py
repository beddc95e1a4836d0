"""A real overlay for tests: bootstrap node and supernodes as ``overlay`` processes."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.daemons import Daemon, wait_ready
from tests.helpers.netutil import loopback_ips
from tests.helpers.node_keys import write_node_key

#: every node lists all of them: these supernodes share one loopback /24 (the default is 4)
DIRECTORY_ARGS = ["--directory-per-network", "64"]


class ProcessOverlay:
    """``overlay bootstrap`` + N ``overlay supernode`` processes on distinct loopback IPs."""

    def __init__(self, tmp: Path, supernodes: int, extra_args: list[str] | None = None) -> None:
        self.tmp = tmp
        self.ips = loopback_ips(1 + supernodes)
        self.port = 4000
        self.extra = extra_args or []
        self.bootstrap: Daemon | None = None
        self.supernodes: list[Daemon] = []

    @property
    def bootstrap_addr(self) -> str:
        return f"{self.ips[0]}:{self.port}"

    def supernode_addr(self, i: int) -> str:
        return f"{self.ips[1 + i]}:{self.port}"

    def http(self, i: int | None) -> str:
        return f"{self.ips[0 if i is None else 1 + i]}:8080"

    def supernode_args(self, i: int) -> list[str]:
        return ["supernode", "--listen", self.supernode_addr(i), "--bootstrap",
                self.bootstrap_addr, "--http", self.http(i),
                "--state-dir", str(self.tmp / f"sn{i}"), *DIRECTORY_ARGS, *self.extra]

    async def start(self) -> ProcessOverlay:
        # pooled keys solving the id puzzle: no daemon grinds one at start (~1 s each)
        for state in ["boot", *(f"sn{i}" for i in range(len(self.ips) - 1))]:
            write_node_key(self.tmp / state / "node.key")
        self.bootstrap = Daemon(["bootstrap", "--listen", self.bootstrap_addr, "--http",
                                 self.http(None), "--state-dir", str(self.tmp / "boot"),
                                 *DIRECTORY_ARGS],
                                self.tmp / "boot.log").start()
        await wait_ready(self.http(None), self.bootstrap)
        for i in range(len(self.ips) - 1):
            self.supernodes.append(
                Daemon(self.supernode_args(i), self.tmp / f"sn{i}.log").start())
        for i, daemon in enumerate(self.supernodes):
            await wait_ready(self.http(i), daemon)
        return self

    def stop(self) -> None:
        for daemon in [*self.supernodes, *([self.bootstrap] if self.bootstrap else [])]:
            daemon.kill()

"""A long-lived public DHT node: the bootstrap node, and the base of a supernode.

It loads (or creates) its key in the state dir, joins through ``--bootstrap`` or through the
peers it saved last time, keeps re-joining while alone, saves its peers, and serves HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from overlay.core.identity import Identity, id_puzzle_ok
from overlay.core.logs import get_logger
from overlay.core.resolver import resolve
from overlay.dht import DHTConfig, DHTNode, StorageLimits
from overlay.node.directory_checks import DirectoryChecks
from overlay.node.errors import NodeError
from overlay.node.http_api import ExtraMetrics, HttpLimits, make_app, start_http
from overlay.node.metrics import tcp_metrics
from overlay.node.tcp_service import AttachHandler, ServiceLimits, TcpService
from overlay.relay.server import RelayServer

log = get_logger(__name__)


@dataclass
class NodeOptions:
    listen: tuple[str, int]
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    advertise: tuple[str, int] | None = None
    key_path: Path | None = None
    state_dir: Path | None = None
    http: tuple[str, int] | None = None
    dht: DHTConfig = field(default_factory=DHTConfig)
    #: what the node holds for others, the supernode directory's limits among them
    storage: StorageLimits = field(default_factory=StorageLimits)
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    rejoin_interval_s: float = 5.0
    save_interval_s: float = 60.0


def load_identity(opts: NodeOptions) -> Identity:
    """The node's key: kept in the key file or state dir (created once, its id solving the
    network's id puzzle: ~1 s), else a new one for this run."""
    path = opts.key_path
    if path is None and opts.state_dir is not None:
        path = opts.state_dir / "node.key"
    if path is not None:
        return Identity.load_or_create(path, opts.dht.id_puzzle_bits)
    log.warning("ephemeral_key", hint="pass --state-dir or --key to keep this node's identity")
    return Identity.generate_node(opts.dht.id_puzzle_bits)


class NodeDaemon:
    """A bootstrap node: it answers lookups over TCP but takes no attachments, and its relay
    refuses. A supernode passes its ``attach_handler`` and ``relay``."""

    role = "bootstrap"

    def __init__(
        self,
        opts: NodeOptions,
        identity: Identity | None = None,
        *,
        attach_handler: AttachHandler | None = None,
        relay: RelayServer | None = None,
    ) -> None:
        self.opts = opts
        self.identity = identity or load_identity(opts)
        if not id_puzzle_ok(self.identity.node_id, opts.dht.id_puzzle_bits):
            raise NodeError("a public node's key must solve the DHT's id puzzle "
                            f"({opts.dht.id_puzzle_bits} bits): Identity.generate_node")
        self.dht = DHTNode(self.identity, opts.dht, opts.storage, state_dir=opts.state_dir)
        self.tcp = TcpService(self.identity, self.dht, opts.limits, attach_handler, relay)
        self.directory_checks: DirectoryChecks | None = None
        self.joined = asyncio.Event()
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()

    @property
    def advertised(self) -> tuple[str, int]:
        return self.opts.advertise or self.dht.address

    def ready(self) -> bool:
        return self.joined.is_set()

    def extra_metrics(self) -> ExtraMetrics | None:
        """A bootstrap node's: its TCP listener's (a supernode adds its own)."""
        tcp = self.tcp
        return lambda: tcp_metrics(tcp)

    def http_routes(self, app: web.Application) -> None:
        """Subclasses add their own routes."""

    async def start(self) -> None:
        host, port = self.opts.listen
        await self.dht.start(host, port)
        await self.tcp.start(host, self.dht.address[1])
        # the supernode records this node holds are listed once their address proves the key
        self.directory_checks = DirectoryChecks(self.dht.storage.directory, self.advertised[0],
                                                self.opts.limits.session)
        self.directory_checks.start()
        log.info("dht_listening", role=self.role, address=f"{host}:{self.dht.address[1]}",
                 node_id=self.identity.node_id.hex(), public_id=self.identity.public_id)
        if self.opts.http is not None:
            app = make_app(self.dht, self.ready, self.extra_metrics(), self.opts.http_limits)
            self.http_routes(app)
            self._http = await start_http(app, *self.opts.http)
            log.info("http_listening", address=f"{self.opts.http[0]}:{self.opts.http[1]}")
        await self._join()
        self._tasks.append(asyncio.create_task(self._keep_joined()))

    async def _join(self) -> None:
        addrs = await resolve(self.opts.bootstrap)
        own = {self.dht.address, self.advertised}
        addrs = [a for a in addrs if a not in own]
        if not self.opts.bootstrap and self.dht.load_peers() == []:
            # the first node of a network has nobody to join: it is ready on its own
            self.joined.set()
            return
        contacts = await self.dht.bootstrap(addrs)
        if contacts:
            if not self.joined.is_set():
                log.info("joined", contacts=contacts)
            self.joined.set()
            self.dht.save_peers()
        elif self.opts.bootstrap:
            log.warning("join_failed", bootstrap=[f"{h}:{p}" for h, p in self.opts.bootstrap],
                        retry_in_s=self.opts.rejoin_interval_s)

    async def _keep_joined(self) -> None:
        since_save = 0.0
        while True:
            await asyncio.sleep(self.opts.rejoin_interval_s)
            since_save += self.opts.rejoin_interval_s
            try:
                if self.dht.routing_table_size == 0:
                    await self._join()
                if since_save >= self.opts.save_interval_s:
                    since_save = 0.0
                    self.dht.save_peers()
            except Exception:
                log.exception("rejoin_failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.cleanup()
        if self.directory_checks is not None:
            self.directory_checks.stop()
        await self.tcp.stop()
        self.dht.stop()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        log.info("stopping", role=self.role)
        await self.stop()

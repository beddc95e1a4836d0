"""HTTP for operators (aiohttp): /healthz, /readyz, /metrics, GET /v1/users/{name}.

``/v1/users/{name}`` costs a DHT lookup, so it is bounded (:class:`HttpLimits`): a token
bucket per client IP, one lookup per request, a cap on lookups in flight; a refused request
gets 429 with ``Retry-After`` and starts nothing.
"""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from overlay.core import records
from overlay.core.rate_limit import KeyedBuckets
from overlay.dht import DHTNode
from overlay.dht.directory import Directory
from overlay.dht.names import lookup_name

ExtraMetrics = Callable[[], Iterable[Metric]]


@dataclass(frozen=True)
class HttpLimits:
    """What ``GET /v1/users/{name}`` may cost a node (README, docs/ARCHITECTURE.md)."""

    #: per client IP: sustained lookups a second, and the burst a new IP starts with
    user_rate_per_s: float = 1.0
    user_burst: float = 10.0
    #: lookups in flight at once, all clients together (more: 429 at once, nothing queued)
    max_concurrent_lookups: int = 8
    #: client IPs remembered (least recently seen forgotten first)
    max_tracked_ips: int = 16_384


@dataclass
class HttpStats:
    #: DHT lookups started by ``/v1/users/{name}``
    user_lookups: int = 0
    #: requests answered 429, by reason: "rate_limited" (this IP's bucket), "busy" (the cap)
    refused: Counter[str] = field(default_factory=Counter)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("overlay_http_user_lookups",
                                  "DHT lookups started by /v1/users/NAME",
                                  value=self.user_lookups)
        refused = CounterMetricFamily("overlay_http_refused",
                                      "/v1/users/NAME requests answered 429, by reason",
                                      labels=["reason"])
        for reason, n in self.refused.items():
            refused.add_metric([reason], n)
        yield refused


class DHTCollector(Collector):
    """Exports a node's DHT and storage counters; one registry per node, no globals."""

    def __init__(self, node: DHTNode, extra: ExtraMetrics | None = None,
                 http: HttpStats | None = None) -> None:
        self.node = node
        self.extra = extra
        self.http = http

    def collect(self) -> Iterator[Metric]:
        stats = self.node.stats
        rpc = CounterMetricFamily(
            "overlay_dht_rpcs", "DHT requests by method and direction",
            labels=["method", "direction"],
        )
        for method, n in stats.requests_in.items():
            rpc.add_metric([method, "in"], n)
        for method, n in stats.requests_out.items():
            rpc.add_metric([method, "out"], n)
        yield rpc
        dropped = CounterMetricFamily(
            "overlay_dht_datagrams_dropped", "Datagrams dropped by reason", labels=["reason"]
        )
        for reason, n in stats.dropped.items():
            dropped.add_metric([reason], n)
        yield dropped
        yield CounterMetricFamily("overlay_dht_rpc_timeouts", "DHT requests unanswered",
                                  value=stats.timeouts)
        yield CounterMetricFamily("overlay_dht_rpc_retransmits",
                                  "DHT requests sent again after their adaptive timeout",
                                  value=stats.retransmits)
        yield CounterMetricFamily("overlay_dht_puts_local_only",
                                  "Puts no other node took at first (then retried)",
                                  value=stats.puts_local_only)
        replication = CounterMetricFamily(
            "overlay_dht_replication_retries", "How retried local-only puts ended",
            labels=["outcome"])
        for outcome, n in stats.replication.items():
            replication.add_metric([outcome], n)
        yield replication
        storage = self.node.storage
        yield GaugeMetricFamily("overlay_records_stored", "Records held", value=storage.entry_count)
        yield GaugeMetricFamily("overlay_records_bytes", "Bytes of records held",
                                value=storage.byte_count)
        rejected = CounterMetricFamily(
            "overlay_records_rejected", "Records refused by reason", labels=["reason"]
        )
        for reason, n in storage.stats.rejected.items():
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily("overlay_records_evicted",
                                  "Records evicted to make room for others",
                                  value=storage.stats.evicted)
        yield GaugeMetricFamily("overlay_dht_contacts", "Routing table size",
                                value=self.node.routing_table_size)
        refused_contacts = CounterMetricFamily(
            "overlay_dht_contacts_refused",
            "Contacts kept out of the routing table or lookups by the Sybil limits",
            labels=["where", "reason"])
        for where, reasons in self.node.contacts_refused().items():
            for reason, n in reasons.items():
                refused_contacts.add_metric([where, reason], n)
        yield refused_contacts
        yield from directory_metrics(storage.directory)
        if self.http is not None:
            yield from self.http.collect()
        if self.extra is not None:
            yield from self.extra()


def directory_metrics(directory: Directory) -> Iterator[Metric]:
    """The supernode directory this node holds: records by state, dial-backs by outcome,
    records refused or pushed out of the waiting pool by reason."""
    held = GaugeMetricFamily("overlay_directory_records",
                             "Supernode records held, by state (listed: proven and served)",
                             labels=["state"])
    counts = directory.counts()
    for state in ("listed", "standby", "waiting"):
        held.add_metric([state], counts.get(state, 0))
    yield held
    per_key = directory.per_key()
    yield GaugeMetricFamily("overlay_directory_keys",
                            "Directory (shard) keys this node holds supernode records under",
                            value=len(per_key))
    yield GaugeMetricFamily("overlay_directory_max_records_per_key",
                            "Supernode records held under the fullest directory key",
                            value=max(per_key.values(), default=0))
    dials = CounterMetricFamily("overlay_directory_dial_backs",
                                "Dial-backs to supernode records' addresses, by outcome",
                                labels=["outcome"])
    for outcome, n in directory.stats.dials.items():
        dials.add_metric([outcome], n)
    yield dials
    refused = CounterMetricFamily("overlay_directory_refused",
                                  "Supernode records refused or pushed out before a dial-back",
                                  labels=["reason"])
    for reason, n in directory.stats.refused.items():
        refused.add_metric([reason], n)
    yield refused


def record_json(signed: records.SignedRecord) -> dict[str, Any]:
    r = signed.record
    out: dict[str, Any] = {
        "kind": r.kind.name.lower(),
        "signed": base64.b64encode(signed.wire).decode(),
        "seq": r.seq,
        "issued_at": r.issued_at,
        "expires_at": r.expires_at,
    }
    if isinstance(r, records.PresenceRecord):
        out.update(
            user=r.user, public_key=r.user_key.hex(), device=r.device, online=r.online,
            supernode=f"{r.supernode_host}:{r.supernode_port}" if r.online else None,
            supernode_key=r.supernode_key.hex() or None, capabilities=list(r.capabilities),
        )
    elif isinstance(r, records.NameClaim):
        out.update(user=r.user, public_key=r.user_key.hex())
    else:
        out.update(
            node_key=r.node_key.hex(), address=f"{r.host}:{r.port}", load=r.load,
            max_clients=r.max_clients, relay_capacity_bps=r.relay_capacity_bps,
            relay_spare_bps=r.relay_spare_bps,
        )
    return out


def make_app(
    node: DHTNode,
    ready: Callable[[], bool],
    extra_metrics: ExtraMetrics | None = None,
    limits: HttpLimits | None = None,
) -> web.Application:
    limits = limits or HttpLimits()
    stats = HttpStats()
    buckets: KeyedBuckets[str] = KeyedBuckets(
        limits.user_rate_per_s, limits.user_burst, limits.max_tracked_ips)
    retry_after = str(max(1, math.ceil(1.0 / limits.user_rate_per_s))
                      if limits.user_rate_per_s > 0 else 60)
    in_flight = [0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DHTCollector(node, extra_metrics, stats))

    def too_many(reason: str) -> web.Response:
        stats.refused[reason] += 1
        return web.json_response({"error": "too many requests", "reason": reason},
                                 status=429, headers={"Retry-After": retry_after})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready", "contacts": node.routing_table_size})
        return web.json_response({"status": "joining"}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            content_type="text/plain", charset="utf-8")

    async def user(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            records.check_name(name)
        except records.RecordError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if not buckets.allow(request.remote or "?", time.monotonic()):
            return too_many("rate_limited")
        if in_flight[0] >= limits.max_concurrent_lookups:
            return too_many("busy")
        in_flight[0] += 1
        stats.user_lookups += 1
        try:
            named = await lookup_name(node, name)
        finally:
            in_flight[0] -= 1
        owner = named.owner
        return web.json_response({
            "user": name,
            "public_key": owner.key.hex() if owner.key else None,
            "conflict": owner.conflict,
            "keys": [k.hex() for k in owner.keys],
            "records": [record_json(s) for s in named.records],
        })

    app = web.Application(client_max_size=4096)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/users/{name}", user)
    return app


async def start_http(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

"""A supernode's Prometheus metrics beyond the DHT's (:mod:`overlay.node.http_api`):
attached clients, TCP sessions, refusals and cut-offs, lookups, signals, and the relay."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from overlay.node.admission import Admission
from overlay.node.http_api import ExtraMetrics
from overlay.node.record_publisher import relay_capacity
from overlay.node.signal_gate import SignalStats
from overlay.node.tcp_service import TcpService
from overlay.relay.datagram import DatagramRelay
from overlay.relay.server import RelayServer


def supernode_metrics(
    admission: Admission, tcp: TcpService, relay: RelayServer, signals: SignalStats,
    datagram: DatagramRelay | None = None,
) -> ExtraMetrics:
    def collect() -> Iterable[Metric]:
        yield GaugeMetricFamily("overlay_attached_clients", "Clients attached",
                                value=len(admission.attached))
        yield from tcp_metrics(tcp)
        refused = CounterMetricFamily("overlay_attach_refused", "Attachments refused",
                                      labels=["reason"])
        for reason, n in admission.refused.items():
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily("overlay_lookups", "Lookups served",
                                  value=tcp.stats.lookups)
        yield from signal_metrics(signals)
        yield from relay_metrics(relay)
        if datagram is not None:
            yield from datagram_relay_metrics(datagram)

    return collect


def tcp_metrics(tcp: TcpService) -> Iterable[Metric]:
    """Every public node's TCP listener: sessions, what they buffer before the handshake,
    and every refusal, cut-off and eviction by reason."""
    yield GaugeMetricFamily("overlay_tcp_sessions", "Open TCP sessions",
                            value=len(tcp.sessions))
    yield GaugeMetricFamily("overlay_tcp_pre_handshake_bytes",
                            "Bytes buffered for connections that have not completed the "
                            "handshake", value=tcp.pre_handshake_bytes())
    cut = CounterMetricFamily("overlay_sessions_cut_off",
                              "Sessions refused or closed, by reason", labels=["reason"])
    for reason, n in tcp.stats.cut_off.items():
        cut.add_metric([reason], n)
    yield cut


def signal_metrics(signals: SignalStats) -> Iterable[Metric]:
    refused = CounterMetricFamily("overlay_signals_refused",
                                  "Signals not delivered, by reason", labels=["reason"])
    for reason, n in signals.refused.items():
        refused.add_metric([reason], n)
    yield refused
    yield CounterMetricFamily("overlay_signals_deferred",
                              "Signals answered 'checking' (not decided yet: asked again)",
                              value=signals.deferred)
    yield CounterMetricFamily("overlay_signals_delivered",
                              "Signals that passed every check, handed to a client here",
                              value=signals.delivered)
    yield CounterMetricFamily("overlay_signals_forwarded",
                              "Clients' signals accepted by the receiver's supernode",
                              value=signals.forwarded)


def relay_metrics(relay: RelayServer) -> Iterable[Metric]:
    sessions = GaugeMetricFamily("overlay_relay_sessions", "Relay sessions",
                                 labels=["state"])
    sessions.add_metric(["waiting"], len(relay.waiting))
    sessions.add_metric(["paired"], len(relay.active))
    #: callees held before their caller came (``relay.early_callees``)
    sessions.add_metric(["callee_early"], len(relay.early))
    yield sessions
    yield GaugeMetricFamily("overlay_relay_capacity_bps", "Relay budget (bits/s)",
                            value=relay_capacity(relay)[0])
    yield GaugeMetricFamily("overlay_relay_reserved_bps",
                            "Relay rate reserved by sessions (bits/s)",
                            value=relay.budget.reserved_bps)
    yield CounterMetricFamily("overlay_relay_forwarded_bytes",
                              "Bytes forwarded by the relay (both directions)",
                              value=relay.forwarded_bytes)
    refused = CounterMetricFamily("overlay_relay_refused", "Relay connections refused",
                                  labels=["reason"])
    for reason, n in relay.stats.refused.items():
        refused.add_metric([reason], n)
    yield refused
    ended = CounterMetricFamily("overlay_relay_sessions_ended", "Relay sessions ended",
                                labels=["reason"])
    for reason, n in relay.stats.ended.items():
        ended.add_metric([reason], n)
    yield ended
    yield CounterMetricFamily("overlay_relay_throttled_seconds",
                              "Seconds relay reading was paused by the budget",
                              value=relay.stats.throttled_s)


def datagram_relay_metrics(relay: DatagramRelay) -> Iterable[Metric]:
    """The datagram relay for calls (its bytes are also in ``overlay_relay_forwarded_bytes``:
    both relays draw on one budget)."""
    sessions = GaugeMetricFamily("overlay_relay_call_sessions", "Datagram relay sessions",
                                 labels=["state"])
    paired = sum(1 for s in relay.sessions.values() if s.callee is not None)
    sessions.add_metric(["waiting"], len(relay.sessions) - paired)
    sessions.add_metric(["paired"], paired)
    yield sessions
    yield GaugeMetricFamily("overlay_relay_call_fast_path_sessions",
                            "Paired datagram relay sessions lent to the C fast path now",
                            value=sum(1 for s in relay.sessions.values() if s.lease is not None))
    stats = relay.stats
    yield CounterMetricFamily("overlay_relay_calls", "Calls relayed (datagram sessions paired)",
                              value=stats.calls)
    yield CounterMetricFamily("overlay_relay_datagrams", "Datagrams forwarded for calls",
                              value=stats.datagrams)
    yield CounterMetricFamily("overlay_relay_datagram_bytes",
                              "Bytes of datagrams forwarded for calls", value=stats.bytes)
    refused = CounterMetricFamily("overlay_relay_call_refused",
                                  "Datagram relay allocations refused", labels=["reason"])
    for reason, n in stats.refused.items():
        refused.add_metric([reason], n)
    yield refused
    dropped = CounterMetricFamily("overlay_relay_datagrams_dropped",
                                  "Datagrams the relay did not forward", labels=["reason"])
    for reason, n in stats.dropped.items():
        dropped.add_metric([reason], n)
    yield dropped
    ended = CounterMetricFamily("overlay_relay_call_sessions_ended",
                                "Datagram relay sessions ended", labels=["reason"])
    for reason, n in stats.ended.items():
        ended.add_metric([reason], n)
    yield ended

"""Supernodes: public DHT nodes that clients behind NAT attach to over outbound TCP.

A supernode publishes its own signed record (address, load, capacity) to the DHT's supernode
directory, admits clients up to ``--max-clients`` (then refuses with alternatives), publishes
each attached client's signed presence record and keeps it published while the client is
attached, and tells its clients to move when it shuts down. It also relays
(:mod:`overlay.relay`) within ``relay_capacity_bps`` and advertises its spare relay capacity
in its record, re-published when sessions start or end (at most once per
``relay_republish_min_s``). Every ``vivaldi_interval_s`` it times a DHT round trip to a few other
supernodes from the directory and moves its Vivaldi coordinate (:mod:`overlay.core.vivaldi`), which
its record carries, so a caller can estimate the relay-to-callee leg without probing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from overlay.attach import (
    Attach,
    AttachOk,
    Detach,
    Message,
    Moving,
    ReachabilityRequest,
    ReachabilityResult,
    Refused,
    RefuseReason,
    SignalDelivery,
    SignalResult,
)
from overlay.attach.adapter import SessionError, probe
from overlay.attach.errors import AttachRejected
from overlay.attach.messages import Signal
from overlay.attach.verification import verify_attach
from overlay.core import records
from overlay.core.identity import Identity, node_id_for
from overlay.core.logs import get_logger
from overlay.core.vivaldi import Coordinate, CoordinateKeeper, moved
from overlay.dht import PutFailed
from overlay.node.daemon import NodeDaemon, NodeOptions
from overlay.node.http_api import ExtraMetrics
from overlay.node.tcp_service import AttachHandler, ServedSession
from overlay.relay.budget import BudgetConfig
from overlay.relay.server import RelayServer

log = get_logger(__name__)

#: signals travel between supernodes in one DHT datagram (requests are capped at 4 KiB)
SIGNAL_FORWARD_MAX = 3072
SIGNAL_FORWARD_TRIES = 3


@dataclass
class SupernodeOptions:
    max_clients: int = 10_000
    #: how often the supernode re-signs its own record (lifetime: three periods)
    record_refresh_s: float = 60.0
    #: B: the relay's total forwarding rate, bits/s over both directions; 0: no relaying
    relay_capacity_bps: int = 0
    #: C: the most one relay session may reserve; 0: a quarter of B, at least 1 Mbit/s
    relay_session_cap_bps: int = 0
    relay_max_sessions: int = 32
    relay_max_session_bytes: int = 2**30
    relay_max_session_s: float = 2 * 3600.0
    #: the record is re-published on relay load changes, at most this often
    relay_republish_min_s: float = 3.0
    #: a Vivaldi round (RTT to a few other supernodes) about this often; 0: never
    vivaldi_interval_s: float = 20.0
    vivaldi_peers_per_round: int = 3
    #: the record is re-published early when the coordinate moved this far (seconds of RTT)
    vivaldi_republish_moved_s: float = 0.005


def next_seq(last: int) -> int:
    """Sequence numbers that only grow, across restarts too (milliseconds since the epoch)."""
    return max(last + 1, int(time.time() * 1000))


class Supernode(NodeDaemon, AttachHandler):
    role = "supernode"

    def __init__(
        self,
        opts: NodeOptions,
        sn: SupernodeOptions | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.sn = sn or SupernodeOptions()
        self.attached: dict[tuple[str, str], ServedSession] = {}
        self.refused: Counter[str] = Counter()
        self._record_seq = 0
        self.record: records.SignedRecord | None = None
        self._published_spare: int | None = None
        self._last_publish = float("-inf")
        self._republish: asyncio.Task[None] | None = None
        self.vivaldi = CoordinateKeeper()
        self._published_coord = self.vivaldi.coord
        super().__init__(opts, identity)
        self.relay = RelayServer(
            BudgetConfig(
                total_bps=self.sn.relay_capacity_bps,
                session_cap_bps=self.sn.relay_session_cap_bps,
                max_sessions=self.sn.relay_max_sessions,
                max_session_bytes=self.sn.relay_max_session_bytes,
                max_session_s=self.sn.relay_max_session_s,
            ),
            on_change=self._relay_changed,
        )
        self.tcp.relay = self.relay

    # -- AttachHandler ----------------------------------------------------------------------

    def attach_handler(self) -> AttachHandler | None:
        return self

    def accepting(self) -> bool:
        return len(self.attached) < self.sn.max_clients and not self.stopping.is_set()

    def load_permille(self) -> int:
        return min(1000, len(self.attached) * 1000 // max(1, self.sn.max_clients))

    async def _refuse(
        self, session: ServedSession, code: RefuseReason, message: str, label: str
    ) -> None:
        self.refused[label] += 1
        alternatives = await self.tcp.alternatives(exclude=self.identity.public_key)
        session.proto.send(Refused(int(code), message, alternatives))
        self.tcp.cut_off(session, message, label, expected=code is RefuseReason.FULL)

    async def on_attach(self, session: ServedSession, msg: Attach) -> None:
        assert session.result is not None
        try:
            signed = verify_attach(msg, session.result)
        except AttachRejected as exc:
            await self._refuse(session, RefuseReason.BAD_RECORD, str(exc), "bad_record")
            return
        rec = signed.record
        assert isinstance(rec, records.PresenceRecord)
        slot = (rec.user, rec.device)
        if (rec.supernode_host, rec.supernode_port) != self.advertised:
            await self._refuse(session, RefuseReason.BAD_RECORD,
                               "presence record names another address for this supernode",
                               "bad_record")
            return
        first = session.attached is None
        if first:
            other = self.attached.get(slot)
            if other is not None and other is not session:
                assert other.result is not None
                if other.result.client_key != session.result.client_key:
                    await self._refuse(session, RefuseReason.NOT_ALLOWED,
                                       f"{rec.user}/{rec.device} is attached with another key",
                                       "name_claimed")
                    return
                self.tcp.cut_off(other, "replaced by a newer session", "replaced")
            elif not self.accepting():
                await self._refuse(session, RefuseReason.FULL,
                                   f"full ({len(self.attached)} clients); try another supernode",
                                   "full")
                return
        try:
            await self.dht.put(signed)
        except PutFailed as exc:
            if exc.result.refused["name_claimed"]:
                await self._refuse(session, RefuseReason.NOT_ALLOWED,
                                   f"the name {rec.user!r} is held by another key",
                                   "name_claimed")
            else:
                await self._refuse(session, RefuseReason.BAD_RECORD,
                                   f"presence record not stored: {exc}", "not_stored")
            return
        if session.attached is not None:
            self.dht.forget_published(session.attached)
        session.attached = signed
        self.attached[slot] = session
        if first:
            session.proto.send(AttachOk(session.proto.peer[0], session.proto.peer[1],
                                        max(1, round(self.opts.limits.heartbeat_s))))
            log.info("client_attached", user=rec.user, device=rec.device,
                     peer=f"{session.proto.peer[0]}:{session.proto.peer[1]}",
                     clients=len(self.attached))

    async def on_detach(self, session: ServedSession, msg: Detach) -> None:
        assert session.result is not None
        try:
            signed = records.verify(msg.presence_record)
        except records.RecordError as exc:
            self.tcp.cut_off(session, f"bad offline record: {exc}", "bad_record")
            return
        rec = signed.record
        if (
            not isinstance(rec, records.PresenceRecord)
            or rec.online
            or rec.user_key != session.result.client_key
            or (rec.user, rec.device) != (session.result.user, session.result.device)
        ):
            self.tcp.cut_off(session, "a Detach carries this session's offline record",
                             "bad_record")
            return
        try:
            await self.dht.put(signed)
        except PutFailed as exc:
            log.warning("offline_record_not_stored", user=rec.user, error=str(exc))
        self.dht.forget_published(signed)
        self._forget(session)
        log.info("client_detached", user=rec.user, device=rec.device)
        session.proto.close("detached")

    async def on_message(self, session: ServedSession, msg: Message) -> None:
        if isinstance(msg, ReachabilityRequest):
            await self.check_reachability(session, msg)
        elif isinstance(msg, Signal):
            await self.forward_signal(session, msg)

    async def check_reachability(self, session: ServedSession, msg: ReachabilityRequest) -> None:
        """Dial back to the session's own source IP (never to an address the client names)
        on TCP (a probe must be answered) and UDP (a DHT ping answered by the same key)."""
        assert session.result is not None
        ip = session.proto.peer[0]
        now = time.monotonic()
        if session.attached is None or now - session.last_reachability_check < 30.0:
            self.tcp.cut_off(session, "reachability checks need an attached session, "
                             "at most one per 30 s", "rate_limited")
            return
        session.last_reachability_check = now
        try:
            await probe(ip, msg.port, self.identity, timeout=2.0, count=1)
            tcp_ok = True
        except SessionError:
            tcp_ok = False
        try:
            await self.dht.call((ip, msg.port), "ping",
                                node_id=node_id_for(session.result.client_key))
            udp_ok = True
        except TimeoutError:
            udp_ok = False
        log.info("reachability_checked", peer=f"{ip}:{msg.port}", tcp=tcp_ok, udp=udp_ok)
        session.proto.send(ReachabilityResult(msg.request_id, ip, tcp_ok, udp_ok))

    # -- signalling ---------------------------------------------------------------------------

    async def forward_signal(self, session: ServedSession, msg: Signal) -> None:
        """Route an attached client's opaque signal to ``to_user``'s supernode(s).

        The payload is end-to-end signed by the sender; supernodes only forward it, and the
        receiver checks the signature against the sender's own presence records.
        """
        assert session.result is not None
        if session.attached is None:
            self.tcp.cut_off(session, "signalling needs an attached session", "not_attached")
            return
        if len(msg.payload) > SIGNAL_FORWARD_MAX:
            session.proto.send(SignalResult(msg.request_id, False,
                                            f"signal payload over {SIGNAL_FORWARD_MAX} bytes"))
            return
        now = time.time()
        targets = [
            s.record for s in await self.dht.get(records.user_key(msg.to_user))
            if isinstance(s.record, records.PresenceRecord) and s.record.online
            and s.record.expires_at > now
            and (not msg.to_device or s.record.device == msg.to_device)
        ]
        if not targets:
            session.proto.send(SignalResult(msg.request_id, False,
                                            f"{msg.to_user} is offline or unknown"))
            return
        args: list[object] = [session.result.user, session.result.device,
                              session.result.client_key, msg.to_user, "", msg.payload]
        delivered, errors = 0, []
        for rec in targets:
            args[4] = rec.device
            if rec.supernode_key == self.identity.public_key:
                ok, reason = self.deliver_signal(*args)  # type: ignore[arg-type]
            else:
                ok, reason = await self._forward_signal(rec, args)
            delivered += ok
            if not ok:
                errors.append(f"{rec.device}: {reason}")
        session.proto.send(SignalResult(msg.request_id, delivered > 0,
                                        "; ".join(errors)[:200]))

    async def _forward_signal(
        self, rec: records.PresenceRecord, args: list[object]
    ) -> tuple[bool, str]:
        """One UDP request to the user's supernode, retried: a datagram may be lost, and a
        repeated delivery is harmless (receivers drop a session id they already have)."""
        for _ in range(SIGNAL_FORWARD_TRIES):
            try:
                reply = await self.dht.call((rec.supernode_host, rec.supernode_port), "signal",
                                            *args, node_id=node_id_for(rec.supernode_key))
            except TimeoutError:
                continue
            ok = isinstance(reply, dict) and reply.get("ok") is True
            return ok, str(reply.get("reason", "")) if isinstance(reply, dict) else ""
        return False, "the user's supernode did not answer"

    def deliver_signal(
        self, from_user: str, from_device: str, from_key: bytes, to_user: str,
        to_device: str, payload: bytes,
    ) -> tuple[bool, str]:
        target = self.attached.get((to_user, to_device))
        if target is None or target.proto.conn is None or target.proto.conn.closed:
            return False, f"{to_user}/{to_device} is not attached here"
        target.proto.send(SignalDelivery(from_user, from_device, from_key, payload))
        return True, ""

    def _dht_signal(self, addr: tuple[str, int], sender_key: bytes, args: list[object]) -> object:
        """DHT method "signal": another supernode forwards a signal to a client attached here."""
        if (
            len(args) != 6
            or not all(type(a) is str for a in (args[0], args[1], args[3], args[4]))
            or type(args[2]) is not bytes or type(args[5]) is not bytes
        ):
            raise ValueError("signal takes from_user, from_device, from_key, to_user, "
                             "to_device, payload")
        try:
            delivery = SignalDelivery(args[0], args[1], args[2], args[5])  # type: ignore[arg-type]
        except Exception as exc:
            raise ValueError(f"bad signal: {exc}") from None
        ok, reason = self.deliver_signal(delivery.from_user, delivery.from_device,
                                         delivery.from_key, str(args[3]), str(args[4]),
                                         delivery.payload)
        return {"ok": ok, "reason": reason}

    @staticmethod
    def _dht_binding(addr: tuple[str, int], sender_key: bytes, args: list[object]) -> object:
        """DHT method "binding": tell the sender the address its datagram came from."""
        return {"host": addr[0], "port": addr[1]}

    def on_closed(self, session: ServedSession) -> None:
        if session.attached is not None:
            rec = session.attached.record
            assert isinstance(rec, records.PresenceRecord)
            log.info("client_gone", user=rec.user, device=rec.device,
                     reason=session.proto.close_reason)
        self._forget(session)

    def _forget(self, session: ServedSession) -> None:
        if session.attached is None:
            return
        rec = session.attached.record
        assert isinstance(rec, records.PresenceRecord)
        if self.attached.get((rec.user, rec.device)) is session:
            del self.attached[(rec.user, rec.device)]
        # stop republishing; the record expires on its own within a few refresh periods
        self.dht.forget_published(session.attached)
        session.attached = None

    # -- own record -------------------------------------------------------------------------

    async def publish_record(self) -> None:
        self._record_seq = next_seq(self._record_seq)
        self._last_publish = time.monotonic()
        host, port = self.advertised
        capacity, spare = self.relay_capacity()
        self._published_spare = spare
        self._published_coord = self.vivaldi.coord
        self.record = records.supernode(
            self.identity, host, port, seq=self._record_seq,
            relay_capacity_bps=capacity,
            relay_spare_bps=spare,
            load=len(self.attached), max_clients=self.sn.max_clients,
            coords=self._published_coord.to_record(),
            lifetime_s=3 * self.sn.record_refresh_s,
        )
        try:
            await self.dht.put(self.record)
        except PutFailed as exc:
            log.warning("supernode_record_not_stored", error=str(exc))

    def relay_capacity(self) -> tuple[int, int]:
        """(capacity, spare) in bits/s as the record advertises them: B and B - reserved."""
        capacity = self.relay.config.total_bps if self.relay.config.enabled else 0
        return capacity, min(capacity, self.relay.budget.spare_bps)

    def _relay_changed(self) -> None:
        """Relay sessions started or ended: re-publish the record soon (coalesced)."""
        if self._republish is not None or self.stopping.is_set() or self.record is None:
            return
        self._republish = asyncio.create_task(self._republish_relay())

    async def _republish_relay(self) -> None:
        try:
            wait = self._last_publish + self.sn.relay_republish_min_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.relay_capacity()[1] != self._published_spare:
                await self.publish_record()
        except Exception:
            log.exception("supernode_record_refresh_failed")
        finally:
            self._republish = None
        # sessions may have changed while publishing
        if self.relay_capacity()[1] != self._published_spare:
            self._relay_changed()

    async def _keep_record(self) -> None:
        while True:
            await asyncio.sleep(self.sn.record_refresh_s)
            try:
                await self.publish_record()
            except Exception:
                log.exception("supernode_record_refresh_failed")

    # -- network coordinate -----------------------------------------------------------------

    async def _keep_coordinate(self) -> None:
        rng = random.Random()
        while True:
            await asyncio.sleep(self.sn.vivaldi_interval_s * rng.uniform(0.5, 1.0))
            try:
                await self.coordinate_round()
            except Exception:
                log.exception("vivaldi_round_failed")

    async def coordinate_round(self) -> int:
        """Time a DHT round trip to a few supernodes whose coordinates are known, move ours,
        and re-publish the record when it moved far; returns the number of samples taken."""
        peers: dict[bytes, tuple[records.SupernodeRecord, Coordinate]] = {}
        for signed in await self.tcp.directory():
            r = signed.record
            if isinstance(r, records.SupernodeRecord) and r.node_key != self.identity.public_key:
                coord = Coordinate.from_record(r.coords)
                if coord is not None and r.node_key not in peers:
                    peers[r.node_key] = (r, coord)
        chosen = self.vivaldi.pick(list(peers), self.sn.vivaldi_peers_per_round)
        samples = 0
        for key in chosen:
            rec, coord = peers[key]
            started = time.monotonic()
            try:
                await self.dht.call((rec.host, rec.port), "binding", node_id=node_id_for(key))
            except (TimeoutError, OSError) as exc:
                log.debug("vivaldi_peer_silent", peer=key.hex()[:16], error=str(exc))
                continue
            self.vivaldi.observe(key, coord, time.monotonic() - started)
            samples += 1
        now, then = self.vivaldi.coord, self._published_coord
        if (moved(now, then) > self.sn.vivaldi_republish_moved_s
                or then.error - now.error > 0.25):  # early rounds: it has learnt a lot
            await self.publish_record()
        return samples

    async def start(self) -> None:
        self.dht.register("binding", self._dht_binding)
        self.dht.register("signal", self._dht_signal)
        await super().start()
        await self.publish_record()
        self._tasks.append(asyncio.create_task(self._keep_record()))
        if self.sn.vivaldi_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._keep_coordinate()))
        log.info("supernode_ready", address="{}:{}".format(*self.advertised),
                 max_clients=self.sn.max_clients)

    async def stop(self) -> None:
        self.stopping.set()
        if self._republish is not None:
            self._republish.cancel()
        alternatives = await self.tcp.alternatives(exclude=self.identity.public_key)
        for session in list(self.attached.values()):
            session.proto.send(Moving("supernode shutting down", alternatives))
            session.proto.close("supernode shutting down")
        await super().stop()

    # -- metrics ----------------------------------------------------------------------------

    def extra_metrics(self) -> ExtraMetrics | None:
        def collect() -> Iterable[Metric]:
            yield GaugeMetricFamily("overlay_attached_clients", "Clients attached",
                                    value=len(self.attached))
            yield GaugeMetricFamily("overlay_tcp_sessions", "Open TCP sessions",
                                    value=len(self.tcp.sessions))
            cut = CounterMetricFamily("overlay_sessions_cut_off",
                                      "Sessions closed for a reason", labels=["reason"])
            for reason, n in self.tcp.stats.cut_off.items():
                cut.add_metric([reason], n)
            yield cut
            refused = CounterMetricFamily("overlay_attach_refused", "Attachments refused",
                                          labels=["reason"])
            for reason, n in self.refused.items():
                refused.add_metric([reason], n)
            yield refused
            yield CounterMetricFamily("overlay_lookups", "Lookups served",
                                      value=self.tcp.stats.lookups)
            yield from self._relay_metrics()

        return collect

    def _relay_metrics(self) -> Iterable[Metric]:
        relay = self.relay
        sessions = GaugeMetricFamily("overlay_relay_sessions", "Relay sessions",
                                     labels=["state"])
        sessions.add_metric(["waiting"], len(relay.waiting))
        sessions.add_metric(["paired"], len(relay.active))
        yield sessions
        yield GaugeMetricFamily("overlay_relay_capacity_bps", "Relay budget (bits/s)",
                                value=self.relay_capacity()[0])
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

"""The client daemon: keeps a user's device attached to a nearby supernode.

What it does, and where the decisions are made (:mod:`overlay.client.attach_policy`):

* **Discovery.** Supernode candidates come from the host cache (:mod:`overlay.client.host_cache`),
  from the directory of any live session, and -- when none of those answers -- from the
  bootstrap nodes' directory over lookup-only TCP sessions (first contact trusts the
  bootstrap node's key and pins it in the cache). Candidates are probed in parallel and
  ranked by RTT among those that say they accept clients.
* **Attachment.** A session to the chosen supernode pins the node key from its signed
  record; the client signs a presence record naming that supernode's advertised address
  and sends ``Attach``; it re-signs and refreshes it every ``presence_refresh_s``
  (lifetime three periods) with sequence numbers that only grow, across restarts too.
* **Warm backup.** A second, lookup-only session is kept to the next-best supernode
  (preferably on another IP); it also answers lookups when the primary is gone.
* **Failover.** When the supernode's session is lost (closed, or silent for three
  heartbeats), when it sends ``Moving``, or when it refuses us, the client re-attaches:
  the backup first, then the alternatives the supernode named, then a rediscovery; a
  ``Refused(FULL)`` sends it to the alternatives that refusal names. Failed rounds back off
  exponentially with jitter, capped.
* **Clean exit.** SIGINT/SIGTERM: a signed offline record goes out in ``Detach`` and the
  daemon waits briefly for the supernode to publish it and close.
* **Control socket.** :mod:`overlay.client.control`: ``status``, ``lookup``, ``supernodes``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlay.attach import (
    Attach,
    AttachOk,
    Message,
    Moving,
    Refused,
    RefuseReason,
    SessionConfig,
    SignalDelivery,
)
from overlay.attach.adapter import AttachRefused, ClientSession, SessionError, probe
from overlay.attach.messages import Alternative
from overlay.client.attach_policy import (
    Backoff,
    BackoffPolicy,
    Candidate,
    EndReason,
    FailoverPlan,
    Measurement,
    Rediscover,
    Source,
    choose_backup,
    rank,
    resolve_alternatives,
)
from overlay.client.control import ControlError, ControlServer, JSONObject
from overlay.client.host_cache import HostCache
from overlay.client.promotion import Promoter, PromotionPolicy
from overlay.client.promotion import run as run_promotion
from overlay.core import records
from overlay.core.addresses import Address, resolve
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.records import NAME_PATTERN, PresenceRecord, SignedRecord, SupernodeRecord
from overlay.core.tasks import TaskSet
from overlay.media.service import MediaConfig, MediaService, SendFailed

log = get_logger(__name__)

STATE_FILE = "client.json"
#: an offline record outlives the online ones by far: "offline" beats "unknown"
OFFLINE_LIFETIME_S = 23 * 3600.0
MAX_PRESENCE_REFRESH_S = 8 * 3600.0


def default_device() -> str:
    """A valid device name derived from the host name (``device`` if nothing usable)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", socket.gethostname().lower())
    name = name.lstrip("._-")[:64].rstrip("-") or "device"
    return name if NAME_PATTERN.match(name) else "device"


@dataclass
class ClientOptions:
    user: str
    key_path: Path
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    device: str = field(default_factory=default_device)
    state_dir: Path | None = None
    control_path: Path | None = None
    inbox: Path | None = None
    #: False with ``--no-supernode``: this client never offers to serve as a supernode
    may_become_supernode: bool = True
    #: uptime before a publicly reachable client becomes a supernode
    promote_after_s: float = 600.0
    #: port for the dial-back check and, once promoted, the supernode (0: any free port)
    listen_port: int = 0
    heartbeat_s: float = 30.0
    #: 5 min: at 10k clients per supernode, 60 s refreshes cost ~25% of a core (bench);
    #: a crashed client's record lingers at most 3 periods
    presence_refresh_s: float = 300.0
    probe_timeout_s: float = 2.0
    connect_timeout_s: float = 5.0
    attach_timeout_s: float = 10.0
    request_timeout_s: float = 5.0
    detach_wait_s: float = 3.0
    #: candidates probed in one go
    max_probes: int = 16
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)

    def __post_init__(self) -> None:
        records.check_name(self.user)
        records.check_name(self.device, "device name")
        if not 0 < self.presence_refresh_s <= MAX_PRESENCE_REFRESH_S:
            raise ValueError(f"presence refresh must be in (0, {MAX_PRESENCE_REFRESH_S:g}] s")
        if self.heartbeat_s <= 0:
            raise ValueError("heartbeat must be positive")


# --- state ----------------------------------------------------------------------------------


class SeqCounter:
    """Presence sequence numbers: ``max(last + 1, now in ms)``, remembered in the state dir
    so they keep growing across restarts even if the clock steps back."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / STATE_FILE if state_dir is not None else None
        self.last = 0
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                value = data.get("last_seq") if isinstance(data, dict) else None
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    self.last = min(value, records.MAX_SEQ - 1)
            except (OSError, ValueError) as exc:
                log.warning("client_state_ignored", path=str(self.path), error=str(exc))

    def next(self) -> int:
        self.last = max(self.last + 1, int(time.time() * 1000))
        self._save()
        return self.last

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".client.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump({"last_seq": self.last}, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning("client_state_not_saved", path=str(self.path), error=str(exc))


@dataclass
class Link:
    """A live session to a supernode: the attachment, or the lookup-only backup."""

    candidate: Candidate
    session: ClientSession
    since: float
    rtt_s: float | None = None

    @property
    def alive(self) -> bool:
        return not self.session.closed

    def to_json(self) -> JSONObject:
        c = self.candidate
        return {
            "address": c.address, "host": c.host, "port": c.port,
            "node_key": c.node_key.hex(),
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 3),
            "since": self.since,
        }


@dataclass(frozen=True)
class Ended:
    reason: EndReason
    detail: str
    alternatives: tuple[Alternative, ...] = ()


@dataclass
class Attachment(Link):
    ok: AttachOk | None = None
    presence: SignedRecord | None = None
    ended: asyncio.Future[Ended] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    on_signal: Callable[[SignalDelivery], None] | None = None

    def on_message(self, msg: Message) -> None:
        """Unsolicited messages on the attached session."""
        if isinstance(msg, Moving):
            self._end(Ended(EndReason.MOVING, msg.reason, msg.alternatives))
        elif isinstance(msg, Refused):
            self._end(Ended(EndReason.REFUSED, f"{_refuse_label(msg.reason_code)}: "
                            f"{msg.message}", msg.alternatives))
        elif isinstance(msg, SignalDelivery):
            if self.on_signal is not None:
                self.on_signal(msg)
        else:
            log.debug("unsolicited_message", type=type(msg).__name__,
                      supernode=self.candidate.address)

    def _end(self, ended: Ended) -> None:
        if not self.ended.done():
            self.ended.set_result(ended)


@dataclass(frozen=True)
class AttemptFailed:
    error: str
    alternatives: tuple[Alternative, ...] = ()


def _refuse_label(code: int) -> str:
    try:
        return RefuseReason(code).name
    except ValueError:
        return str(code)


def _alt_list(alternatives: tuple[Alternative, ...]) -> list[str]:
    return [f"{a.host}:{a.port}" for a in alternatives]


def record_json(signed: SignedRecord, now: float) -> JSONObject:
    rec = signed.record
    assert isinstance(rec, PresenceRecord)
    supernode = None
    if rec.online:
        host = f"[{rec.supernode_host}]" if ":" in rec.supernode_host else rec.supernode_host
        supernode = {
            "address": f"{host}:{rec.supernode_port}", "host": rec.supernode_host,
            "port": rec.supernode_port, "node_key": rec.supernode_key.hex(),
        }
    return {
        "user": rec.user, "device": rec.device, "public_key": rec.user_key.hex(),
        "online": rec.online and rec.expires_at > now, "supernode": supernode,
        "capabilities": list(rec.capabilities), "seq": rec.seq,
        "issued_at": rec.issued_at, "expires_at": rec.expires_at,
    }


def newest_per_device(found: list[SignedRecord]) -> list[SignedRecord]:
    best: dict[tuple[bytes, str], SignedRecord] = {}
    for signed in found:
        current = best.get(signed.slot)
        if current is None or signed.seq > current.seq:
            best[signed.slot] = signed
    return sorted(best.values(), key=lambda s: s.record.issued_at, reverse=True)


# --- the daemon -------------------------------------------------------------------------------


class ClientDaemon:
    def __init__(self, opts: ClientOptions, identity: Identity | None = None) -> None:
        self.opts = opts
        if opts.state_dir is not None:
            opts.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.identity = identity or _load_identity(opts.key_path)
        #: lookup-only sessions and probes use a throwaway key: they publish nothing
        self.lookup_identity = Identity.generate()
        self.cache = HostCache.in_state_dir(opts.state_dir)
        self.seq = SeqCounter(opts.state_dir)
        self.measured: dict[bytes, Measurement] = {}
        self._rng = random.Random()
        self.primary: Attachment | None = None
        self.backup: Link | None = None
        self.failovers = 0
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self.attached = asyncio.Event()
        self._primary_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background = TaskSet()
        self.promoter = Promoter(
            self.identity,
            PromotionPolicy(enabled=opts.may_become_supernode,
                            promote_after_s=opts.promote_after_s),
            opts.listen_port, opts.state_dir, opts.bootstrap,
        )
        self.media = MediaService(MediaConfig(
            self.identity, opts.user, opts.device,
            opts.inbox or (opts.state_dir / "inbox" if opts.state_dir else Path("inbox")),
        ), self)
        self.control: ControlServer | None = None
        if opts.control_path is not None:
            self.control = ControlServer(opts.control_path)
            self.control.register("status", self._cmd_status, help="attachment and backup")
            self.control.register("lookup", self._cmd_lookup, {"user": (str, True)},
                                  "a user's verified presence records")
            self.control.register("supernodes", self._cmd_supernodes,
                                  help="the host cache")
            self.control.register("send", self._cmd_send, {"user": (str, True),
                                                            "path": (str, True)},
                                  "send a file to a user, end-to-end encrypted",
                                  timeout_s=float("inf"))

    # -- configuration helpers ---------------------------------------------------------------

    @property
    def presence_lifetime_s(self) -> float:
        return 3 * self.opts.presence_refresh_s

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            handshake_timeout_s=self.opts.connect_timeout_s,
            heartbeat_interval_s=self.opts.heartbeat_s,
        )

    def register_command(
        self,
        name: str,
        handler: Callable[[JSONObject], Awaitable[JSONObject]],
        params: dict[str, tuple[type | tuple[type, ...], bool]] | None = None,
        help: str = "",
    ) -> None:
        """Add a control command (e.g. ``send`` from the connectivity work)."""
        if self.control is None:
            raise RuntimeError("this daemon has no control socket")
        self.control.register(name, handler, params, help)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._background.spawn(coro)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.media.start()
        if self.control is not None:
            await self.control.start()
        log.info("client_starting", user=self.opts.user, device=self.opts.device,
                 public_key=self.identity.public_id, known_supernodes=len(self.cache),
                 bootstrap=[f"{h}:{p}" for h, p in self.opts.bootstrap])
        self._tasks.append(asyncio.create_task(self._supervise()))
        self._tasks.append(asyncio.create_task(self._maintain_backup()))
        if self.opts.may_become_supernode:
            self._tasks.append(asyncio.create_task(
                run_promotion(self.promoter, self.primary_session, self.stopping)))

    async def stop(self) -> None:
        self.stopping.set()
        log.info("client_stopping", user=self.opts.user, device=self.opts.device)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._detach()
        if self.backup is not None:
            self.backup.session.close("bye")
            self.backup = None
        self._background.cancel_all()
        await self.promoter.stop()
        await self.media.stop()
        if self.control is not None:
            await self.control.stop()
        self._save_cache()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()

    async def _detach(self) -> None:
        att = self.primary
        self.primary = None
        self.attached.clear()
        if att is None or not att.alive:
            log.info("detach_skipped", reason="not attached")
            return
        offline = records.presence(
            self.identity, self.opts.user, self.opts.device, seq=self.seq.next(),
            online=False, lifetime_s=OFFLINE_LIFETIME_S,
        )
        att.session.detach(offline)
        try:
            async with asyncio.timeout(self.opts.detach_wait_s):
                closed = await att.session.wait_closed()
            log.info("detached", supernode=att.candidate.address, seq=offline.seq, closed=closed)
        except TimeoutError:
            log.warning("detach_unconfirmed", supernode=att.candidate.address,
                        waited_s=self.opts.detach_wait_s)
            att.session.close("bye")

    # -- the attachment loop ------------------------------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.opts.backoff)
        ended: Ended | None = None
        lost: Candidate | None = None
        while not self.stopping.is_set():
            att = await self._acquire(backoff, ended, lost)
            started = loop.time()
            ended = await self._hold(att)
            if ended.reason is EndReason.STOPPING:
                return
            lasted = loop.time() - started
            self.primary = None
            self.attached.clear()
            self._primary_changed.set()
            att.session.close(f"failover: {ended.reason.value}")
            lost = att.candidate
            self.failovers += 1
            if ended.reason is EndReason.LOST:
                self.cache.failed(lost.node_key)
            delay = backoff.session_ended(lasted)
            backup = self.backup.candidate.address if self.backup and self.backup.alive else None
            log.warning("failover", reason=ended.reason.value, detail=ended.detail,
                        supernode=lost.address, attached_s=round(lasted, 3),
                        alternatives=_alt_list(ended.alternatives), backup=backup,
                        delay_s=round(delay, 3))
            if delay > 0:
                log.info("backoff", delay_s=round(delay, 3), attempt=backoff.attempt,
                         why="the last attachment did not last")
                await asyncio.sleep(delay)

    async def _acquire(
        self, backoff: Backoff, ended: Ended | None, lost: Candidate | None
    ) -> Attachment:
        exclude = {lost.node_key} if lost is not None else set()
        alternatives = (
            resolve_alternatives(ended.alternatives, self.cache.candidates()) if ended else []
        )
        while True:
            backup = self.backup.candidate if self.backup and self.backup.alive else None
            plan = FailoverPlan(backup=backup, alternatives=alternatives, exclude=exclude)
            while (step := plan.next()) is not None:
                if isinstance(step, Rediscover):
                    plan.discovered(await self._discover(exclude=set(plan.tried)))
                    continue
                result = await self._try_attach(step.candidate, step.source)
                if isinstance(result, Attachment):
                    return result
                if result.alternatives:
                    plan.refused(resolve_alternatives(result.alternatives,
                                                      self.cache.candidates()))
            delay = backoff.next_delay()
            log.warning("backoff", delay_s=round(delay, 3), attempt=backoff.attempt,
                        why="no supernode accepted us", tried=len(plan.tried))
            await asyncio.sleep(delay)
            exclude, alternatives = set(), []

    async def _try_attach(self, cand: Candidate, source: Source) -> Attachment | AttemptFailed:
        try:
            session = await ClientSession.connect(
                cand.host, cand.port, self.identity, expected_node_key=cand.node_key,
                user=self.opts.user, device=self.opts.device, config=self.session_config(),
                timeout=self.opts.connect_timeout_s,
            )
        except SessionError as exc:
            log.warning("attach_failed", supernode=cand.address, source=source.value,
                        error=str(exc))
            self.cache.failed(cand.node_key)
            self.measured[cand.node_key] = Measurement(None)
            return AttemptFailed(str(exc))
        m = self.measured.get(cand.node_key)
        att = Attachment(cand, session, since=time.time(), rtt_s=m.rtt_s if m else None,
                         on_signal=self._deliver)
        session.on_message = att.on_message
        try:
            signed = self._presence(cand)
            ok = await session.attach(signed, timeout=self.opts.attach_timeout_s)
        except AttachRefused as exc:
            refused = exc.refused
            log.warning("attach_refused", supernode=cand.address, source=source.value,
                        reason=_refuse_label(refused.reason_code), message=refused.message,
                        alternatives=_alt_list(refused.alternatives))
            session.close("refused")
            return AttemptFailed(str(exc), refused.alternatives)
        except SessionError as exc:
            log.warning("attach_failed", supernode=cand.address, source=source.value,
                        error=str(exc))
            session.close("attach failed")
            self.cache.failed(cand.node_key)
            return AttemptFailed(str(exc))
        except BaseException:
            session.close("cancelled")
            raise
        att.ok, att.presence = ok, signed
        self.cache.succeeded(cand, time.time())
        self._save_cache()
        log.info("attached", supernode=cand.address, node_key=cand.node_key.hex(),
                 source=source.value,
                 rtt_ms=None if att.rtt_s is None else round(att.rtt_s * 1000, 3),
                 reflexive=f"{ok.reflexive_host}:{ok.reflexive_port}",
                 heartbeat_s=ok.heartbeat_s, seq=signed.seq)
        return att

    async def _hold(self, att: Attachment) -> Ended:
        """Be attached until the session ends or we stop; refresh presence meanwhile."""
        self.primary = att
        self.attached.set()
        self._primary_changed.set()
        if self.backup is not None and self.backup.candidate.node_key == att.candidate.node_key:
            # the backup became the primary: a new backup is chosen
            self.backup.session.close("promoted to primary")
            self.backup = None
        if att.rtt_s is None:
            self._spawn(self._measure(att))
        refresher = asyncio.create_task(self._refresh_loop(att))
        closed = asyncio.create_task(att.session.wait_closed())
        stop = asyncio.create_task(self.stopping.wait())
        waited: set[asyncio.Future[Any]] = {att.ended, closed, stop}
        try:
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (refresher, closed, stop):
                task.cancel()
        if att.ended.done():
            return att.ended.result()
        if self.stopping.is_set():
            return Ended(EndReason.STOPPING, "stopping")
        return Ended(EndReason.LOST, att.session.proto.close_reason or "connection closed")

    async def _refresh_loop(self, att: Attachment) -> None:
        while True:
            await asyncio.sleep(self.opts.presence_refresh_s)
            signed = self._presence(att.candidate)
            # a refresh is a plain Attach with a higher seq; a refusal arrives as an
            # unsolicited Refused (see Attachment.on_message)
            att.session.send(Attach(signed.wire))
            att.presence = signed
            log.debug("presence_refreshed", supernode=att.candidate.address, seq=signed.seq)
            try:
                self._learn(await att.session.directory(timeout=self.opts.request_timeout_s))
            except SessionError:
                pass
            self._save_cache()

    async def _measure(self, link: Link) -> None:
        measured = await self._probe_all([link.candidate])
        m = measured.get(link.candidate.node_key)
        if m is not None and m.rtt_s is not None:
            link.rtt_s = m.rtt_s

    def _presence(self, cand: Candidate) -> SignedRecord:
        return records.presence(
            self.identity, self.opts.user, self.opts.device, seq=self.seq.next(),
            supernode_key=cand.node_key, supernode_host=cand.host, supernode_port=cand.port,
            lifetime_s=self.presence_lifetime_s,
        )

    # -- discovery ------------------------------------------------------------------------------

    def _learn(self, found: list[SignedRecord]) -> int:
        now = time.time()
        n = 0
        for signed in found:
            if isinstance(signed.record, SupernodeRecord):
                self.cache.add(Candidate.from_record(signed), now)
                n += 1
        return n

    def _save_cache(self) -> None:
        try:
            self.cache.save()
        except OSError as exc:
            log.warning("host_cache_not_saved", error=str(exc))

    async def _probe_all(self, cands: list[Candidate]) -> dict[bytes, Measurement]:
        async def one(cand: Candidate) -> Measurement:
            try:
                r = await probe(cand.host, cand.port, self.lookup_identity,
                                timeout=self.opts.probe_timeout_s, count=2)
            except SessionError:
                return Measurement(None)
            return Measurement(r.rtt_s, r.accepting, r.load_permille)

        chosen = cands[: self.opts.max_probes]
        results = await asyncio.gather(*(one(c) for c in chosen))
        now = time.time()
        out: dict[bytes, Measurement] = {}
        for cand, m in zip(chosen, results, strict=True):
            out[cand.node_key] = m
            self.measured[cand.node_key] = m
            self.cache.measured(cand.node_key, m.rtt_s, now)
        return out

    async def _discover(self, exclude: set[bytes]) -> list[Candidate]:
        """Rank every supernode we know of; ask the bootstrap nodes only if none answers."""
        for link in (self.backup, self.primary):
            if link is not None and link.alive:
                try:
                    self._learn(await link.session.directory(timeout=self.opts.request_timeout_s))
                except SessionError:
                    pass
        known = [c for c in self.cache.candidates() if c.node_key not in exclude]
        ranked = (rank(known, await self._probe_all(known), exclude=exclude, rng=self._rng)
                  if known else [])
        source = "host_cache"
        if not ranked and self.opts.bootstrap:
            fetched = await self._directory_from_bootstrap()
            if fetched:
                self._learn(fetched)
                fresh = {Candidate.from_record(s).node_key for s in fetched}
                known = [c for c in self.cache.candidates()
                         if c.node_key in fresh and c.node_key not in exclude]
                ranked = rank(known, await self._probe_all(known), exclude=exclude,
                              rng=self._rng)
                source = "bootstrap"
        self._save_cache()
        log.info("discovery", source=source, candidates=len(known), usable=len(ranked),
                 best=ranked[0].address if ranked else None)
        return ranked

    async def _directory_from_bootstrap(self) -> list[SignedRecord]:
        addrs = await resolve(self.opts.bootstrap)
        for host, port in addrs:
            address = f"{host}:{port}"
            pinned = self.cache.bootstrap_keys.get(address)
            try:
                session = await ClientSession.connect(
                    host, port, self.lookup_identity, expected_node_key=pinned,
                    lookup_only=True, config=self.session_config(),
                    timeout=self.opts.connect_timeout_s,
                )
            except SessionError as exc:
                log.warning("bootstrap_unreachable", bootstrap=address, error=str(exc),
                            pinned_key=pinned.hex() if pinned else None)
                continue
            try:
                if pinned is None:
                    self.cache.pin_bootstrap(address, session.node_key)
                    log.info("bootstrap_key_pinned", bootstrap=address,
                             node_key=session.node_key.hex())
                found = await session.directory(timeout=self.opts.request_timeout_s)
            except SessionError as exc:
                log.warning("bootstrap_directory_failed", bootstrap=address, error=str(exc))
                continue
            finally:
                session.close("done")
            log.info("directory_fetched", via=address, supernodes=len(found))
            if found:
                return found
        return []

    # -- the warm backup ------------------------------------------------------------------------

    async def _maintain_backup(self) -> None:
        backoff = Backoff(self.opts.backoff)
        while True:
            self._primary_changed.clear()
            primary = self.primary
            if primary is None or not primary.alive:
                await self._primary_changed.wait()
                continue
            link = self.backup
            if link is not None and link.alive and (
                link.candidate.node_key != primary.candidate.node_key
            ):
                await _first(link.session.wait_closed(), self._primary_changed.wait(),
                             timeout=self.opts.presence_refresh_s)
                if not link.alive and self.backup is link:
                    log.warning("backup_lost", supernode=link.candidate.address,
                                reason=link.session.proto.close_reason)
                    self.backup = None
                continue
            if link is not None:
                link.session.close("replaced")
                self.backup = None
            cand = await self._pick_backup(primary)
            if cand is not None and self.primary is primary:
                try:
                    session = await ClientSession.connect(
                        cand.host, cand.port, self.lookup_identity,
                        expected_node_key=cand.node_key, lookup_only=True,
                        config=self.session_config(), timeout=self.opts.connect_timeout_s,
                    )
                except SessionError as exc:
                    log.warning("backup_failed", supernode=cand.address, error=str(exc))
                    self.measured[cand.node_key] = Measurement(None)
                    self.cache.failed(cand.node_key)
                else:
                    if self.primary is not primary or self.stopping.is_set():
                        session.close("not needed")
                        continue
                    m = self.measured.get(cand.node_key)
                    self.backup = Link(cand, session, time.time(), m.rtt_s if m else None)
                    backoff.reset()
                    log.info("backup_ready", supernode=cand.address,
                             node_key=cand.node_key.hex(), rtt_ms=self.backup.to_json()["rtt_ms"],
                             primary=primary.candidate.address)
                    continue
            delay = backoff.next_delay()
            log.info("backoff", delay_s=round(delay, 3), attempt=backoff.attempt,
                     why="no backup supernode available")
            await _first(self._primary_changed.wait(), timeout=delay)

    async def _pick_backup(self, primary: Attachment) -> Candidate | None:
        others = [c for c in self.cache.candidates()
                  if c.node_key != primary.candidate.node_key]
        if not others:
            try:
                self._learn(await primary.session.directory(timeout=self.opts.request_timeout_s))
            except SessionError:
                return None
            others = [c for c in self.cache.candidates()
                      if c.node_key != primary.candidate.node_key]
        ranked = rank(others, await self._probe_all(others), rng=self._rng)
        return choose_backup(ranked, primary.candidate)

    # -- signals for the user --------------------------------------------------------------------

    def _deliver(self, msg: SignalDelivery) -> None:
        """Media invites and answers go to the media service; any other signal is written to
        the inbox dir as one JSON file (mode 0600)."""
        if self.media.on_signal(msg):
            return
        if self.opts.inbox is None:
            log.info("signal_dropped", from_user=msg.from_user, reason="no --inbox")
            return
        item = {
            "from_user": msg.from_user, "from_device": msg.from_device,
            "from_key": msg.from_key.hex(),
            "payload": base64.b64encode(msg.payload).decode(), "received_at": time.time(),
        }
        name = f"{time.time_ns()}-{secrets.token_hex(4)}.json"
        try:
            self.opts.inbox.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".in.", dir=self.opts.inbox)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(item, f)
            os.replace(tmp, self.opts.inbox / name)
        except OSError as exc:
            log.warning("signal_not_stored", error=str(exc))
            return
        log.info("signal_received", from_user=msg.from_user, from_device=msg.from_device,
                 file=name)

    # -- what the media service needs (overlay.media.attachment.AttachmentPort) ---------------

    def binding_supernodes(self) -> list[tuple[Address, bytes]]:
        """Primary and backup supernodes as (UDP address, node key), for binding requests."""
        out = []
        for link in (self.primary, self.backup):
            if link is not None and link.alive:
                out.append(((link.candidate.host, link.candidate.port), link.candidate.node_key))
        return out

    def primary_session(self) -> ClientSession | None:
        att = self.primary
        return att.session if att is not None and att.alive and att.ok is not None else None

    def attach_ok(self) -> AttachOk | None:
        return self.primary.ok if self.primary is not None else None

    def relay_rtts(self) -> dict[bytes, float]:
        return {k: m.rtt_s for k, m in self.measured.items() if m.rtt_s is not None}

    # -- control commands --------------------------------------------------------------------------

    def status(self) -> JSONObject:
        att = self.primary if self.primary is not None and self.primary.alive else None
        backup = self.backup if self.backup is not None and self.backup.alive else None
        supernode: JSONObject | None = None
        reflexive: JSONObject | None = None
        if att is not None:
            supernode = att.to_json()
            if att.ok is not None:
                supernode["heartbeat_s"] = att.ok.heartbeat_s
                ok = att.ok
                host = f"[{ok.reflexive_host}]" if ":" in ok.reflexive_host else ok.reflexive_host
                reflexive = {"address": f"{host}:{ok.reflexive_port}",
                             "host": ok.reflexive_host, "port": ok.reflexive_port}
            if att.presence is not None:
                supernode["presence_seq"] = att.presence.seq
                supernode["presence_expires_at"] = att.presence.expires_at
        state = "stopping" if self.stopping.is_set() else "attached" if att else "connecting"
        return {
            "user": self.opts.user, "device": self.opts.device,
            "public_key": self.identity.public_id, "state": state,
            "supernode": supernode, "backup": backup.to_json() if backup else None,
            "reflexive": reflexive,
            "uptime_s": round(time.time() - self.started_at, 3),
            "failovers": self.failovers, "known_supernodes": len(self.cache),
            "may_become_supernode": self.opts.may_become_supernode, "pid": os.getpid(),
            "promotion": self.promoter.status(),
            "transfers": self.media.transfers[-8:],
            "sending": self.media.sending,
        }

    async def _cmd_status(self, args: JSONObject) -> JSONObject:
        return self.status()

    async def _cmd_send(self, args: JSONObject) -> JSONObject:
        try:
            return await self.media.send(str(args["user"]), Path(str(args["path"])))
        except SendFailed as exc:
            raise ControlError(str(exc)) from None

    def reachable(self) -> bool:
        check = self.promoter.state.last_check
        return bool(check and check.tcp_ok)

    async def lookup(self, user: str) -> tuple[list[SignedRecord], str]:
        """Verified presence records for ``user`` via the primary (else the backup)."""
        errors = []
        for link in (self.primary, self.backup):
            if link is None or not link.alive:
                continue
            try:
                found = await link.session.lookup(user, timeout=self.opts.request_timeout_s)
            except SessionError as exc:
                errors.append(f"{link.candidate.address}: {exc}")
                continue
            return newest_per_device(found), link.candidate.address
        raise SessionError("; ".join(errors) or "not connected to any supernode")

    async def _cmd_lookup(self, args: JSONObject) -> JSONObject:
        user = args["user"]
        try:
            records.check_name(user)
        except records.RecordError as exc:
            raise ControlError(str(exc)) from None
        try:
            found, via = await self.lookup(user)
        except SessionError as exc:
            raise ControlError(f"lookup failed: {exc}") from None
        now = time.time()
        return {"user": user, "via": via, "records": [record_json(s, now) for s in found]}

    async def _cmd_supernodes(self, args: JSONObject) -> JSONObject:
        return {"supernodes": [e.to_json() for e in self.cache.ordered()]}


async def _first(*aws: Coroutine[Any, Any, Any], timeout: float | None = None) -> None:
    """Wait until the first of ``aws`` finishes (or ``timeout``); cancel the rest."""
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _load_identity(path: Path) -> Identity:
    created = not path.exists()
    identity = Identity.load_or_create(path)
    if created:
        log.info("key_created", path=str(path), public_id=identity.public_id)
    return identity

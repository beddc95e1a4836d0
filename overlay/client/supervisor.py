"""The attachment loop: attach to a supernode, stay attached, fail over, detach on exit.

A session to the chosen supernode pins the node key from its signed record; the client signs
a presence record naming that supernode's advertised address and sends ``Attach``; it
re-signs and refreshes it every ``presence_refresh_s`` (lifetime three periods).

When the supernode's session is lost (closed, or silent for three heartbeats), when it sends
``Moving``, or when it refuses us, the client re-attaches: the backup first, then the
alternatives the supernode named, then a rediscovery; a ``Refused(FULL)`` sends it to the
alternatives that refusal names. A lost attachment's failover starts after a random stagger
(``BackoffPolicy.failover_jitter_s``), so a supernode's clients do not reach its neighbours at
once. Failed rounds back off exponentially with jitter, capped.
Some minutes after attaching, a late refine (:mod:`overlay.client.late_refine`) may move the
client to a clearly nearer supernode: attach there first, then close the old session (not a
``Detach``: its offline record would supersede the new presence record). Never while a call
or transfer runs.
On exit a signed offline record goes out in ``Detach`` and the client waits briefly for the
supernode to publish it and close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from overlay.attach import Attach, SignalDelivery
from overlay.attach.adapter import AttachRefused, ClientSession, SessionError
from overlay.client.attach_policy import (
    Backoff,
    Candidate,
    EndReason,
    FailoverPlan,
    Rediscover,
    Source,
    resolve_alternatives,
)
from overlay.client.discovery import Discovery
from overlay.client.late_refine import Stay, decide
from overlay.client.links import Attachment, AttemptFailed, Ended, Links, alt_list, refuse_label
from overlay.client.options import ClientOptions
from overlay.client.presence import PresenceSigner
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.records import SignedRecord

log = get_logger(__name__)


class Supervisor:
    """Keeps ``links.primary`` an attachment until ``stopping`` is set."""

    def __init__(
        self,
        opts: ClientOptions,
        identity: Identity,
        links: Links,
        discovery: Discovery,
        presence: PresenceSigner,
        stopping: asyncio.Event,
        deliver: Callable[[SignalDelivery], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.opts = opts
        self.identity = identity
        self.links = links
        self.discovery = discovery
        self.presence = presence
        self.stopping = stopping
        self.deliver = deliver
        self.spawn = spawn
        #: True while a call or transfer runs: no late move then
        self.busy = busy
        self.failovers = 0
        self.late_moves = 0
        #: late refines that reached a decision (to stay or to move)
        self.late_refines = 0
        #: supernodes a late move left: never moved back to
        self.left: set[bytes] = set()
        self.moved_to: Attachment | None = None
        #: discovery's: no Random of its own, which would shift the seeds tools/sim hands
        #: every later Random()
        self.rng = discovery.rng

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.opts.backoff)
        ended: Ended | None = None
        lost: Candidate | None = None
        while not self.stopping.is_set():
            att = await self.acquire(backoff, ended, lost)
            while True:
                started = loop.time()
                ended = await self.hold(att)
                if ended.reason is not EndReason.NEARER or self.moved_to is None:
                    break
                att = self.switch(att, self.moved_to)
            if ended.reason is EndReason.STOPPING:
                return
            lasted = loop.time() - started
            self.links.set_primary(None)
            att.session.close(f"failover: {ended.reason.value}")
            lost = att.candidate
            self.failovers += 1
            if ended.reason is EndReason.LOST:
                self.discovery.cache.failed(lost.node_key)
            delay = backoff.session_ended(lasted)
            live_backup = self.links.live_backup()
            backup = live_backup.candidate.address if live_backup else None
            log.bind(supernode=lost.address).warning(
                "failover", reason=ended.reason.value, detail=ended.detail,
                attached_s=round(lasted, 3), alternatives=alt_list(ended.alternatives),
                backup=backup, delay_s=round(delay, 3))
            if delay > 0:
                if backoff.attempt:
                    log.info("backoff", delay_s=round(delay, 3), attempt=backoff.attempt,
                             why="the last attachment did not last")
                await asyncio.sleep(delay)  # else the failover's stagger (jitter)

    async def acquire(
        self, backoff: Backoff, ended: Ended | None, lost: Candidate | None
    ) -> Attachment:
        cache = self.discovery.cache
        exclude = {lost.node_key} if lost is not None else set()
        alternatives = (
            resolve_alternatives(ended.alternatives, cache.candidates()) if ended else []
        )
        while True:
            live_backup = self.links.live_backup()
            backup = live_backup.candidate if live_backup else None
            plan = FailoverPlan(backup=backup, alternatives=alternatives, exclude=exclude)
            while (step := plan.next()) is not None:
                if isinstance(step, Rediscover):
                    plan.discovered(await self.discovery.discover(exclude=set(plan.tried)))
                    continue
                result = await self.try_attach(step.candidate, step.source)
                if isinstance(result, Attachment):
                    return result
                if result.alternatives:
                    plan.refused(resolve_alternatives(result.alternatives, cache.candidates()))
            delay = backoff.next_delay()
            log.warning("backoff", delay_s=round(delay, 3), attempt=backoff.attempt,
                        why="no supernode accepted us", tried=len(plan.tried))
            await asyncio.sleep(delay)
            exclude, alternatives = set(), []

    async def try_attach(self, cand: Candidate, source: Source) -> Attachment | AttemptFailed:
        alog = log.bind(supernode=cand.address)
        try:
            session = await ClientSession.connect(
                cand.host, cand.port, self.identity, expected_node_key=cand.node_key,
                user=self.opts.user, device=self.opts.device,
                config=self.opts.session_config(), timeout=self.opts.connect_timeout_s,
                keepalive=self.opts.keepalive,
            )
        except SessionError as exc:
            alog.warning("attach_failed", source=source.value, error=str(exc))
            self.discovery.failed(cand)
            return AttemptFailed(str(exc))
        att = Attachment(cand, session, since=time.time(), rtt_s=self.discovery.rtt_s(cand),
                         on_signal=self.deliver)
        session.on_message = att.on_message
        try:
            signed = self.presence.online(cand)
            ok = await session.attach(signed, timeout=self.opts.attach_timeout_s,
                                      claim=self.presence.claim())
        except AttachRefused as exc:
            refused = exc.refused
            alog.warning("attach_refused", source=source.value,
                         reason=refuse_label(refused.reason_code), message=refused.message,
                         alternatives=alt_list(refused.alternatives))
            session.close("refused")
            return AttemptFailed(str(exc), refused.alternatives)
        except SessionError as exc:
            alog.warning("attach_failed", source=source.value, error=str(exc))
            session.close("attach failed")
            self.discovery.cache.failed(cand.node_key)
            return AttemptFailed(str(exc))
        except BaseException:
            session.close("cancelled")
            raise
        att.ok, att.presence = ok, signed
        self.discovery.cache.succeeded(cand, time.time())
        self.discovery.save_cache()
        alog.info("attached", node_key=cand.node_key.hex(), source=source.value,
                  rtt_ms=None if att.rtt_s is None else round(att.rtt_s * 1000, 3),
                  reflexive=f"{ok.reflexive_host}:{ok.reflexive_port}",
                  heartbeat_s=ok.heartbeat_s, seq=signed.seq)
        return att

    async def hold(self, att: Attachment) -> Ended:
        """Be attached until the session ends or we stop; refresh presence meanwhile."""
        links = self.links
        links.set_primary(att)
        if links.backup is not None and links.backup.candidate.node_key == att.candidate.node_key:
            # the backup became the primary: a new backup is chosen
            links.backup.session.close("promoted to primary")
            links.backup = None
        if att.rtt_s is None:
            self.spawn(self.discovery.measure(att))
        refresher = asyncio.create_task(self.refresh_loop(att))
        closed = asyncio.create_task(att.session.wait_closed())
        stop = asyncio.create_task(self.stopping.wait())
        refine = asyncio.create_task(self.late_refine(att))
        waited: set[asyncio.Future[Any]] = {att.ended, closed, stop, refine}
        try:
            while True:
                done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
                if done != {refine} or (refine.exception() is None
                                        and refine.result() is not None):
                    break
                if refine.exception() is not None:
                    log.bind(supernode=att.candidate.address).warning(
                        "late_refine_failed", error=repr(refine.exception()))
                waited.discard(refine)  # staying: hold on without it
        finally:
            for task in (refresher, closed, stop, refine):
                task.cancel()
        nearer = (refine.result() if refine.done() and not refine.cancelled()
                  and refine.exception() is None else None)
        if nearer is not None and (att.ended.done() or self.stopping.is_set()):
            nearer.session.close("move given up")
            nearer = None
        if att.ended.done():
            return att.ended.result()
        if self.stopping.is_set():
            return Ended(EndReason.STOPPING, "stopping")
        if nearer is not None:
            self.moved_to = nearer
            return Ended(EndReason.NEARER, nearer.candidate.address)
        return Ended(EndReason.LOST, att.session.proto.close_reason or "connection closed")

    def switch(self, old: Attachment, new: Attachment) -> Attachment:
        """Break after make: ``new`` is the primary, then ``old``'s session closes (the old
        supernode stops republishing our presence record; the new one's is newer)."""
        self.moved_to = None
        self.late_moves += 1
        self.left.add(old.candidate.node_key)
        self.links.set_primary(new)
        old.session.close("moved to a nearer supernode")
        log.bind(supernode=new.candidate.address).info(
            "moved_nearer", left=old.candidate.address, moves=self.late_moves,
            rtt_ms=None if new.rtt_s is None else round(new.rtt_s * 1000, 3),
            left_rtt_ms=None if old.rtt_s is None else round(old.rtt_s * 1000, 3))
        return new

    async def late_refine(self, att: Attachment) -> Attachment | None:
        """After the policy's delay, attach to a clearly nearer supernode if there is one
        (:func:`overlay.client.late_refine.decide`); None when staying (then it is done)."""
        policy = self.opts.late_refine
        if not policy.enabled or self.late_moves >= policy.max_moves:
            return None
        alog = log.bind(supernode=att.candidate.address)
        await asyncio.sleep(policy.delay(self.rng))
        waits = 0
        while self.busy():
            if waits >= policy.max_busy_retries:
                alog.info("late_refine_skipped", reason="busy")
                return None
            waits += 1
            await asyncio.sleep(policy.busy_retry_s)
        cands = await self.discovery.late_candidates(att.session, att.candidate)
        if cands is None:
            alog.info("late_refine_skipped", reason="no_directory")
            return None
        decision = decide(att.candidate, cands, self.discovery.measured, policy, self.rng,
                          left=self.left, moves_so_far=self.late_moves)
        self.late_refines += 1
        if isinstance(decision, Stay):
            alog.info("late_refine_stay", reason=decision.reason, candidates=len(cands))
            return None
        if self.busy():
            return None
        alog.info("late_refine_move", to=decision.target.address,
                  rtt_ms=round(decision.current_rtt_s * 1000, 3),
                  to_rtt_ms=round(decision.target_rtt_s * 1000, 3))
        new = await self.try_attach(decision.target, Source.LATE_REFINE)
        if isinstance(new, AttemptFailed):
            return None
        if self.busy():
            # a call or transfer started meanwhile: stay, and name the old supernode again
            new.session.close("move given up")
            self.refresh(att)
            alog.info("late_refine_given_up", reason="busy")
            return None
        return new

    async def refresh_loop(self, att: Attachment) -> None:
        alog = log.bind(supernode=att.candidate.address)
        while True:
            await asyncio.sleep(self.opts.presence_refresh_s)
            signed = self.refresh(att)
            alog.debug("presence_refreshed", seq=signed.seq)
            await self.discovery.learn_from(att.session)
            self.discovery.save_cache()

    def refresh(self, att: Attachment) -> SignedRecord:
        """Send a newly signed presence record naming ``att``'s supernode."""
        signed = self.presence.online(att.candidate)
        # a refresh is a plain Attach with a higher seq; a refusal arrives as an
        # unsolicited Refused (see Attachment.on_message)
        att.session.send(Attach(signed.wire, self.presence.claim().wire))
        att.presence = signed
        return signed

    async def detach(self) -> None:
        """Send a signed offline record in ``Detach`` and wait briefly for the close."""
        att = self.links.primary
        self.links.primary = None
        self.links.attached.clear()
        if att is None or not att.alive:
            log.info("detach_skipped", reason="not attached")
            return
        offline = self.presence.offline()
        att.session.detach(offline)
        alog = log.bind(supernode=att.candidate.address)
        try:
            async with asyncio.timeout(self.opts.detach_wait_s):
                closed = await att.session.wait_closed()
            alog.info("detached", seq=offline.seq, closed=closed)
        except TimeoutError:
            alog.warning("detach_unconfirmed", waited_s=self.opts.detach_wait_s)
            att.session.close("bye")

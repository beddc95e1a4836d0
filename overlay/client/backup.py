"""The warm backup: a second, lookup-only session to the next-best supernode.

It is kept preferably on another IP than the attachment; the supervisor tries it first when
the attachment is lost, and it answers lookups while the primary is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from overlay.attach.adapter import ClientSession, SessionError
from overlay.client.attach_policy import Backoff, Candidate, choose_backup
from overlay.client.discovery import Discovery
from overlay.client.links import Attachment, Link, Links
from overlay.client.options import ClientOptions
from overlay.core.logs import get_logger

log = get_logger(__name__)


class BackupKeeper:
    """Keeps ``links.backup`` a live session to a supernode other than the primary."""

    def __init__(self, opts: ClientOptions, links: Links, discovery: Discovery,
                 stopping: asyncio.Event) -> None:
        self.opts = opts
        self.links = links
        self.discovery = discovery
        self.stopping = stopping

    async def run(self) -> None:
        links = self.links
        backoff = Backoff(self.opts.backoff)
        while True:
            links.primary_changed.clear()
            primary = links.primary
            if primary is None or not primary.alive:
                await links.primary_changed.wait()
                continue
            link = links.backup
            if link is not None and link.alive and (
                link.candidate.node_key != primary.candidate.node_key
            ):
                await first(link.session.wait_closed(), links.primary_changed.wait(),
                            timeout=self.opts.presence_refresh_s)
                if not link.alive and links.backup is link:
                    log.bind(supernode=link.candidate.address).warning(
                        "backup_lost", reason=link.session.proto.close_reason)
                    links.backup = None
                continue
            if link is not None:
                link.session.close("replaced")
                links.backup = None
            cand = await self.pick(primary)
            if cand is not None and links.primary is primary:
                session = await self._connect(cand)
                if session is not None:
                    if links.primary is not primary or self.stopping.is_set():
                        session.close("not needed")
                        continue
                    backup = Link(cand, session, time.time(), self.discovery.rtt_s(cand))
                    links.backup = backup
                    backoff.reset()
                    log.bind(supernode=cand.address).info(
                        "backup_ready", node_key=cand.node_key.hex(),
                        rtt_ms=backup.to_json()["rtt_ms"], primary=primary.candidate.address)
                    continue
            delay = backoff.next_delay()
            log.info("backoff", delay_s=round(delay, 3), attempt=backoff.attempt,
                     why="no backup supernode available")
            await first(links.primary_changed.wait(), timeout=delay)

    async def _connect(self, cand: Candidate) -> ClientSession | None:
        """A lookup-only session to ``cand``; None (logged, remembered) if it failed."""
        try:
            return await ClientSession.connect(
                cand.host, cand.port, self.discovery.lookup_identity,
                expected_node_key=cand.node_key, lookup_only=True,
                config=self.opts.session_config(), timeout=self.opts.connect_timeout_s,
                keepalive=self.opts.keepalive,
            )
        except SessionError as exc:
            log.bind(supernode=cand.address).warning("backup_failed", error=str(exc))
            self.discovery.failed(cand)
            return None

    async def pick(self, primary: Attachment) -> Candidate | None:
        """The best supernode other than ``primary``'s, preferably on another IP."""
        cache = self.discovery.cache
        others = [c for c in cache.candidates() if c.node_key != primary.candidate.node_key]
        if not others:
            if not await self.discovery.learn_from(primary.session):
                return None
            others = [c for c in cache.candidates()
                      if c.node_key != primary.candidate.node_key]
        return choose_backup(await self.discovery.rank(others), primary.candidate)


async def first(*aws: Coroutine[Any, Any, Any], timeout: float | None = None) -> None:
    """Wait until the first of ``aws`` finishes (or ``timeout``); cancel the rest."""
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()

"""The client daemon: keeps a user's device attached to a nearby supernode.

:class:`ClientDaemon` wires the parts, each in its own module (the decisions themselves are
sans-IO, in :mod:`overlay.client.attach_policy`):

* **Discovery** (:mod:`overlay.client.discovery`): the host cache, the directory of live
  sessions, the bootstrap nodes; candidates probed in parallel and ranked by RTT.
* **Attachment and failover** (:mod:`overlay.client.supervisor`): attach with a signed
  presence record (:mod:`overlay.client.presence`, sequence numbers that only grow, across
  restarts too), refresh it, re-attach when the supernode is lost, moves or refuses us.
* **Warm backup** (:mod:`overlay.client.backup`): a lookup-only session to the next-best
  supernode, preferably on another IP.
* **Clean exit.** SIGINT/SIGTERM: a signed offline record goes out in ``Detach`` and the
  daemon waits briefly for the supernode to publish it and close.
* **Signals** for the user go to the media service or the inbox (:mod:`overlay.client.inbox`).
* **Contacts** (:mod:`overlay.client.contacts`, :mod:`overlay.client.requests`): pinned keys
  (trust on first use) in the state dir, and invites from others kept as requests until the
  user accepts them (``--accept-from contacts``, the default) or answered (``anyone``).
* **Control socket** (:mod:`overlay.client.control`, commands in
  :mod:`overlay.client.control_commands`, :mod:`overlay.client.contact_commands`,
  :mod:`overlay.client.calls`):
  ``status``, ``lookup``, ``supernodes``, ``send``, ``call``, ``calls``, ``contacts``,
  ``contact_add``, ``contact_forget``, ``requests``, ``accept``, ``decline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from overlay.attach import AttachOk, SignalDelivery
from overlay.attach.adapter import ClientSession
from overlay.client.attach_policy import Measurement
from overlay.client.backup import BackupKeeper
from overlay.client.calls import Calls
from overlay.client.contact_commands import ContactCommands
from overlay.client.contacts import Contact, Contacts
from overlay.client.control import ControlServer, JSONObject
from overlay.client.control_commands import ClientCommands
from overlay.client.discovery import Discovery
from overlay.client.host_cache import HostCache
from overlay.client.inbox import store_signal
from overlay.client.links import Attachment, Links
from overlay.client.options import ClientOptions
from overlay.client.presence import PresenceSigner
from overlay.client.promotion import Promoter, PromotionPolicy
from overlay.client.promotion import run as run_promotion
from overlay.client.status import status_json
from overlay.client.supervisor import Supervisor
from overlay.core.addresses import Address
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.records import SignedRecord
from overlay.core.tasks import TaskSet
from overlay.media.service import MediaService
from overlay.media.session import MediaConfig

log = get_logger(__name__)


class ClientDaemon:
    def __init__(self, opts: ClientOptions, identity: Identity | None = None) -> None:
        self.opts = opts
        if opts.state_dir is not None:
            opts.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.identity = identity or Identity.load_or_create(opts.key_path)
        self.cache = HostCache.in_state_dir(opts.state_dir)
        self.links = Links()
        self.discovery = Discovery(opts, self.cache, self.links)
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background = TaskSet()
        self.supervisor = Supervisor(
            opts, self.identity, self.links, self.discovery,
            PresenceSigner(self.identity, opts), self.stopping, self._deliver, self._spawn,
            busy=lambda: bool(self.media.sessions),
        )
        self.backup_keeper = BackupKeeper(opts, self.links, self.discovery, self.stopping)
        self.promoter = Promoter(
            self.identity,
            PromotionPolicy(enabled=opts.may_become_supernode,
                            promote_after_s=opts.promote_after_s),
            opts.listen_port, opts.state_dir, opts.bootstrap,
        )
        self.contacts = Contacts(opts.state_dir, opts.accept_from)
        self.media = self._make_media()
        self.calls = Calls(self.media)  # answers calls, with or without a control socket
        self.control: ControlServer | None = None
        if opts.control_path is not None:
            self.control = ControlServer(opts.control_path)
            ClientCommands(self.status, self.lookup, self.cache, self.media).register(
                self.control)
            ContactCommands(self.contacts, self.lookup, self.accept_request,
                            self.decline_request).register(self.control)
            self.calls.register(self.control)

    def _make_media(self) -> MediaService:
        opts = self.opts
        return MediaService(MediaConfig(
            self.identity, opts.user, opts.device,
            opts.inbox or (opts.state_dir / "inbox" if opts.state_dir else Path("inbox")),
            opts.inbox_limits, port_mapping=opts.port_mapping,
        ), self, self.contacts)

    # -- what the parts share ------------------------------------------------------------------

    @property
    def primary(self) -> Attachment | None:
        return self.links.primary

    @property
    def attached(self) -> asyncio.Event:
        return self.links.attached

    @property
    def measured(self) -> dict[bytes, Measurement]:
        return self.discovery.measured

    # -- what the media service needs (overlay.media.attachment.AttachmentPort) ---------------

    def primary_session(self) -> ClientSession | None:
        return self.links.primary_session()

    def binding_supernodes(self) -> list[tuple[Address, bytes]]:
        """The primary and backup supernodes; while the backup is not up, the other supernode
        that answered our probes fastest (a NAT type needs two views to compare)."""
        live = self.links.supernode_udp_addresses()
        if len(live) >= 2:
            return live
        have = {key for _, key in live}
        rtts = self.discovery.rtts()
        others = sorted((c for c in self.cache.candidates()
                         if c.node_key not in have and c.node_key in rtts),
                        key=lambda c: rtts[c.node_key])
        return live + [((c.host, c.port), c.node_key) for c in others[:1]]

    def attach_ok(self) -> AttachOk | None:
        return self.primary.ok if self.primary is not None else None

    def relay_rtts(self) -> dict[bytes, float]:
        return {k: m.rtt_s for k, m in self.measured.items() if m.rtt_s is not None}

    def reachable(self) -> bool:
        check = self.promoter.state.last_check
        return bool(check and check.tcp_ok)

    async def lookup(self, user: str) -> tuple[list[SignedRecord], str]:
        """Verified presence records for ``user`` via the primary (else the backup)."""
        return await self.links.lookup(user, timeout=self.opts.request_timeout_s)

    # -- contact requests -------------------------------------------------------------------

    def accept_request(self, user: str) -> Contact:
        """Make the sender of the pending request ``user`` a contact and answer its invite
        (the caller may still be waiting); :class:`~overlay.client.contacts.ContactsError`
        when there is no such request."""
        contact, request = self.contacts.accept(user)
        self.media.answer_request(request.invite)
        return contact

    def decline_request(self, user: str) -> None:
        """Drop the pending request ``user`` and answer it "declined" (no address)."""
        self.media.decline_request(self.contacts.decline(user).invite)

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
        self._tasks.append(asyncio.create_task(self.supervisor.run()))
        self._tasks.append(asyncio.create_task(self.backup_keeper.run()))
        self._tasks.append(asyncio.create_task(self._gather_candidates()))
        # the reachability check runs with --no-supernode too (``reachable``); only the
        # promotion is opted out of
        self._tasks.append(asyncio.create_task(
            run_promotion(self.promoter, self.primary_session, self.stopping, self.attached)))

    async def _gather_candidates(self) -> None:
        """Once attached, ask the router to map the media ports (when we are behind a NAT)
        and the supernodes for our UDP address and NAT type, so that the first send already
        advertises them (and on a network without UDP does not wait for the binding to time
        out)."""
        await self.attached.wait()
        session = self.primary_session()
        if session is not None:
            await self.media.paths.candidates(session)

    async def stop(self) -> None:
        self.stopping.set()
        log.info("client_stopping", user=self.opts.user, device=self.opts.device)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.supervisor.detach()
        if self.links.backup is not None:
            self.links.backup.session.close("bye")
            self.links.backup = None
        self._background.cancel_all()
        await self.promoter.stop()
        await self.media.stop()
        if self.control is not None:
            await self.control.stop()
        self.discovery.save_cache()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()

    # -- signals for the user --------------------------------------------------------------------

    def _deliver(self, msg: SignalDelivery) -> None:
        """Media invites and answers go to the media service; any other signal is written to
        the inbox dir as one JSON file (mode 0600)."""
        if self.media.on_signal(msg):
            return
        if self.opts.inbox is None:
            log.info("signal_dropped", from_user=msg.from_user, reason="no --inbox")
            return
        try:
            name = store_signal(self.opts.inbox, msg, self.opts.inbox_limits)
        except OSError as exc:
            log.warning("signal_not_stored", error=str(exc))
            return
        log.info("signal_received", from_user=msg.from_user, from_device=msg.from_device,
                 file=name)

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> JSONObject:
        return status_json(
            opts=self.opts, identity=self.identity, links=self.links,
            stopping=self.stopping.is_set(), started_at=self.started_at,
            failovers=self.supervisor.failovers, known_supernodes=len(self.cache),
            promotion=self.promoter.status(), transfers=self.media.transfers[-8:],
            sending=self.media.sending, port_mapping=self.media.port_mapping_status(),
            connectivity=self.media.connect_stats.to_json(),
        )

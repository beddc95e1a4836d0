"""A client's media service: sends and answers invites, races paths, moves files.

Caller: look the user up (records verified), choose the key (:class:`ContactsPort`: the
pinned one, the one a ``NAME#KEYPREFIX`` selects, or the name's only key; never one of
several), sign an invite with a fresh X25519 key and our candidates, signal it through our
supernode, wait for the signed answer (whose key must be the chosen key), then race the paths
and send the file. An answer ``accept=false, reason="pending"`` without candidates says the
callee keeps our invite as a contact request: the caller keeps waiting for the real answer
with the same session id, up to ``accept_wait_s``, then fails with :class:`NotAccepted`.

Callee: an invite signed by another key than the one pinned for its sender is refused (no
answer). From a contact (pinned key) it is answered at once. From anyone else it must carry
the name's only key in the caller's presence records; then the contacts port decides: answer
now (``--accept-from anyone``) or keep it as a request, answered "pending" with no address of
ours, until the user accepts (:meth:`MediaService.answer_request`) or declines
(:meth:`MediaService.decline_request`) it. An answered invite races the paths as the responder
and writes the file into the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from overlay.attach import SignalDelivery
from overlay.attach.adapter import ClientSession, SessionError
from overlay.core import records
from overlay.core.addresses import Address
from overlay.core.logs import get_logger
from overlay.core.tasks import TaskSet
from overlay.core.user_ref import UserRef, parse_user_ref
from overlay.core.vivaldi import for_prediction
from overlay.media import (
    candidate_policy,
    direct_paths,
    portmap,
    relay_selector,
    tcp_punch,
    transport_hooks,
)
from overlay.media.attachment import AttachmentPort, ContactsPort, OpenDoor
from overlay.media.connect import (
    TCP_CONNECT_TIMEOUT_S,
    Attempt,
    MediaListener,
    NoPath,
    Securer,
    Timeline,
    close_later,
    connect_as_initiator,
    connect_as_responder,
    default_staggers,
    dial_tcp,
    technique,
)
from overlay.media.connect_stats import ConnectStats
from overlay.media.consent import (
    ACCEPT_WAIT_S,
    ANSWER,
    DECLINED,
    MAX_ACCEPT_WAIT_S,
    PENDING,
    REQUEST,
    NotAccepted,
    SendFailed,
    answer_without_address,
    await_answer,
    choose_target,
    vet_invite,
)
from overlay.media.errors import PathLost
from overlay.media.inbox_limits import InboxGuard
from overlay.media.portmap_io import PortMaps, default_gateway
from overlay.media.relay_selector import RelayHistory
from overlay.media.relay_vouchers import (
    VOUCHER_MARGIN_S,
    callee_signatures,
    caller_signatures,
    voucher_for,
)
from overlay.media.session import LostMidTransfer, MediaConfig, Session
from overlay.media.signalling import (
    Candidates,
    Offer,
    SignallingError,
    new_session_id,
    open_offer,
    sign_offer,
    transcript_hash,
)
from overlay.media.stream import ByteStream, MediaStream
from overlay.media.tcp_punch_io import EarlyPunches, punch_attempts
from overlay.media.transfer import (
    PartialStore,
    TransferError,
    expire_interval,
    file_sha256,
    receive_file,
    send_file,
)

log = get_logger(__name__)

#: an invite's ``purpose``: a file transfer (the default, and what an older client sends)
#: or a call (:mod:`overlay.client.calls` runs it over the path)
FILE = "file"
CALL = "call"
MAX_SESSIONS_PER_SEND = 5
#: sessions a send may use in all, counting those a relay ended at its announced limit (a
#: large file through relays that allow 64 MiB per session needs one per 64 MiB)
MAX_RENEWED_SESSIONS = 256
RESUME_RETRY_PAUSE_S = 2.0
#: the rate a file transfer asks a relay to reserve: 0 takes the relay's per-session cap
RELAY_RATE_BPS = 0
ACCEPT_WINDOW_S = TCP_CONNECT_TIMEOUT_S + 2.0
MAX_RECENT = 32
#: how long gathering candidates waits for port mappings still being asked for
PORTMAP_SETTLE_S = 1.0


@dataclass(frozen=True)
class OpenedPath:
    """An answered invite's authenticated path, and what both sides derived it from."""

    session: Session
    invite: Offer
    answer: Offer
    stream: MediaStream
    timeline: Timeline
    #: the X25519 secret and the transcript hash of the signed invite and answer
    shared: bytes
    transcript: bytes


class MediaService:
    """Media for one client: ``config`` says who it is, ``attachment`` is its way to the
    supernodes (signalling, lookups, addresses), ``contacts`` its pins and consent policy
    (default :class:`OpenDoor`: no pins, anyone answered)."""

    def __init__(self, config: MediaConfig, attachment: AttachmentPort,
                 contacts: ContactsPort | None = None) -> None:
        self.config = config
        self.attachment = attachment
        self.contacts: ContactsPort = contacts or OpenDoor()
        self.listener = MediaListener()
        self.udp: transport_hooks.UdpState | None = None
        self.sessions: dict[bytes, Session] = {}
        self.transfers: list[dict[str, Any]] = []
        #: outgoing transfers in progress, for progress bars: {"to", "name", "sent", "size"}
        self.sending: list[dict[str, Any]] = []
        self.partials = PartialStore()
        self.inbox_guard = InboxGuard(config.inbox_limits)
        self.relay_history = RelayHistory()
        #: how path races turned out, per pair of NAT classes and kind of attempt
        self.connect_stats = ConnectStats()
        #: mappings of our media ports from the router (PCP/NAT-PMP), once asked for
        self.portmaps: PortMaps | None = None
        #: runs an answered call over its path (set by the client; None: calls are refused)
        self.call_handler: Callable[[OpenedPath], Awaitable[None]] | None = None
        self._tasks = TaskSet()

    async def start(self) -> None:
        await self.listener.start("0.0.0.0", 0)
        self.udp = await transport_hooks.open_udp()
        self._tasks.spawn(self._expire_partials())

    async def _expire_partials(self) -> None:
        """Remove the ``.partial`` files of transfers not resumed in time, on a timer (not
        only when another transfer arrives)."""
        while True:
            await asyncio.sleep(expire_interval())
            try:
                self.partials.expire()
            except OSError as exc:
                log.warning("partial_expiry_failed", error=str(exc))

    async def stop(self) -> None:
        self._tasks.cancel_all()
        if self.portmaps is not None:
            await self.portmaps.close()  # delete them at the router
        await self.listener.stop()
        if self.udp is not None:
            await transport_hooks.close_udp(self.udp)

    # -- candidates -----------------------------------------------------------------------------

    @staticmethod
    def _local_ip(session: ClientSession) -> str:
        """Our address on the way to the primary supernode."""
        transport = session.proto.transport
        local = transport.get_extra_info("sockname") if transport else None
        return str(local[0]) if local else "127.0.0.1"

    async def map_ports(self, session: ClientSession) -> None:
        """Ask the default gateway for mappings of our TCP listener and UDP socket (once; then
        again for those lost), when the supernode sees us behind a NAT
        (:func:`.portmap.behind_nat`) and ``--no-port-mapping`` was not given."""
        if self.portmaps is not None:
            await self.portmaps.retry(time.monotonic())
            return
        ok = self.attachment.attach_ok()
        if not self.config.port_mapping or ok is None \
                or not portmap.behind_nat(self._local_ip(session), ok.reflexive_host):
            return
        gateway = default_gateway()
        if gateway is None:
            return
        self.portmaps = PortMaps()
        udp_port = self.udp.media.local_address[1] if self.udp is not None else None
        await self.portmaps.start(gateway, self.listener.port, udp_port)

    def port_mapping_status(self) -> dict[str, Any] | None:
        return self.portmaps.to_json() if self.portmaps is not None else None

    def _count_race(self, local: Candidates, remote: Candidates, timeline: Timeline | None,
                    setup: Timeline, slog: FilteringBoundLogger) -> None:
        """Count a race (won or not) in :attr:`connect_stats` and log this side's setup
        timeline (``setup``: its steps since it began, then the race's events)."""
        if timeline is None:
            return
        offset = timeline.started - setup.started
        self.connect_stats.record(local.nat, remote.nat, timeline.events, offset)
        slog.info("setup_timeline", local_nat=local.nat, remote_nat=remote.nat, steps=[
            *setup.events, *((round(t + offset, 4), e) for t, e in timeline.events)])

    async def candidates(self, session: ClientSession) -> Candidates:
        local_ip = self._local_ip(session)
        ok = self.attachment.attach_ok()
        tcp = [(local_ip, self.listener.port)]
        if ok is not None and ok.reflexive_host != local_ip:
            tcp.append((ok.reflexive_host, self.listener.port))
        udp: list[Address] = []
        nat = "unknown"
        if self.udp is not None:
            udp, nat = await transport_hooks.udp_candidates(
                self.udp, self.config.identity, local_ip, self.attachment.binding_supernodes(),
                self.attachment.relay_rtts())
        await self.map_ports(session)
        mapped_tcp: tuple[Address, ...] = ()
        mapped_udp: tuple[Address, ...] = ()
        if self.portmaps is not None:  # a mapped address is a public candidate like any other
            await self.portmaps.wait_settled(PORTMAP_SETTLE_S)
            mapped_tcp, mapped_udp = self.portmaps.mapped("tcp"), self.portmaps.mapped("udp")
        return Candidates(tuple(dict.fromkeys((*tcp, *mapped_tcp))),
                          tuple(dict.fromkeys((*udp, *mapped_udp))), nat,
                          self.attachment.reachable(), mapped_tcp, mapped_udp)

    def _inbound_via_mapping(self, remote: Candidates) -> bool:
        """A TCP connection from the peer that named ``remote`` can only have reached our
        listener through our mapping: we hold a TCP mapping and the peer is not behind our
        public address (not on our LAN)."""
        ok = self.attachment.attach_ok()
        return (self.portmaps is not None and bool(self.portmaps.mapped("tcp"))
                and ok is not None and ok.reflexive_host not in remote.public_hosts())

    # -- paths ----------------------------------------------------------------------------------

    def _inbound_on_lan(self, s: Session, remote: Candidates) -> bool:
        """The peer's TCP connection to our listener came from its address on our LAN."""
        return s.accepted_from is not None and candidate_policy.on_shared_lan(
            s.accepted_from, self._own_reflexive(), remote.public_hosts())

    def _own_reflexive(self) -> tuple[str, ...]:
        """Our reflexive address as our primary supernode saw it (AttachOk), if attached.
        (Not the UDP mappings: any binding supernode could claim we are on loopback.)"""
        ok = self.attachment.attach_ok()
        return (ok.reflexive_host,) if ok is not None else ()

    def _dialable(self, remote: Candidates, slog: FilteringBoundLogger) -> Candidates:
        """``remote`` without the candidates :mod:`.candidate_policy` says not to dial."""
        own = self._own_reflexive()
        peer = remote.public_hosts()
        tcp, dropped_tcp = candidate_policy.select(remote.tcp, own, peer)
        udp, dropped_udp = candidate_policy.select(remote.udp, own, peer)
        for kind, dropped in (("tcp", dropped_tcp), ("udp", dropped_udp)):
            for (host, port), reason in dropped:
                slog.info("candidate_dropped", kind=kind, host=host, port=port, reason=reason)
        return replace(remote, tcp=tcp, udp=udp)

    def _attempts(self, s: Session, local: Candidates, remote: Candidates, shared: bytes,
                  transcript: bytes) -> dict[str, Attempt]:
        attempts: dict[str, Attempt] = {}
        remote = self._dialable(remote, log.bind(session=s.session_id.hex(), peer=s.peer_user))
        def dialer(host: str, port: int) -> Attempt:
            async def dial() -> MediaStream:
                return await dial_tcp(host, port, s.session_id)
            return dial

        mapped = set(remote.mapped_tcp)
        own, peer = self._own_reflexive(), remote.public_hosts()
        for i, (host, port) in enumerate(dict.fromkeys(remote.tcp)):
            kind = "tcp-dial-mapped" if (host, port) in mapped else \
                "tcp-dial-lan" if candidate_policy.on_shared_lan(host, own, peer) else "tcp-dial"
            attempts[f"{kind}-{i}"] = dialer(host, port)
        queue = self.listener.expect(s.session_id)

        async def accept() -> MediaStream:
            # the peer dials as soon as it has the offer; after its connect timeout (plus
            # the signalling delay) nothing more will come this way
            try:
                async with asyncio.timeout(ACCEPT_WINDOW_S):
                    stream = await queue.get()
            except TimeoutError:
                raise PathLost("the peer's direct TCP connection did not arrive") from None
            peername = stream.writer.get_extra_info("peername")
            s.accepted_from = str(peername[0]) if peername else None
            return stream

        attempts["tcp-accept"] = accept
        if self.udp is not None:
            punch = transport_hooks.udp_attempt(self.udp, s.session_id, s.initiator, local,
                                                remote, shared, transcript)
            if punch is not None:
                attempts[punch[0]] = punch[1]
        udp_tried = any(name.startswith("udp-") for name in attempts)
        attempts.update(self._tcp_punch_attempts(s, local, remote, udp_tried))
        return attempts

    def _tcp_punch_attempts(self, s: Session, local: Candidates, remote: Candidates,
                            udp_punch_tried: bool) -> dict[str, Attempt]:
        """TCP hole punching from our listener's port (``remote``: its dialable candidates),
        where :func:`.tcp_punch.plan` says it may work."""
        plan = tcp_punch.plan(local, remote, candidate_policy.public_of(self._own_reflexive()),
                              udp_punch_tried)
        log.info("tcp_punch_plan", session=s.session_id.hex(), reason=plan.reason,
                 targets=[f"{h}:{p}" for h, p in plan.targets], delay_s=plan.delay_s)
        return punch_attempts(plan, self.listener.port, s.session_id)

    def _plan(self, local: Candidates, remote: Candidates, attempts: dict[str, Attempt],
              slog: FilteringBoundLogger) -> tuple[dict[str, float], float]:
        """When each kind of attempt starts for this pair, and how long a late direct path
        is preferred to a relay (:mod:`.direct_paths`)."""
        plan = direct_paths.plan(
            local, remote, direct_paths.one_network(self._own_reflexive(), remote))
        if plan.staggers:
            slog.info("race_plan", local_nat=local.nat, remote_nat=remote.nat,
                      staggers=plan.staggers, prefer_direct_s=plan.prefer_direct_s)
        return {**default_staggers(attempts), **plan.staggers}, plan.prefer_direct_s

    def _securer(self, s: Session, shared: bytes, transcript: bytes) -> Securer:
        async def secure(raw: MediaStream) -> MediaStream:
            return await transport_hooks.secure(raw, shared, transcript, s.initiator)
        return secure

    # -- caller ---------------------------------------------------------------------------------

    async def send(self, to: UserRef | str, path: Path,
                   accept_wait_s: float = ACCEPT_WAIT_S) -> dict[str, Any]:
        """Send ``path`` to ``to`` (``NAME`` or ``NAME#KEYPREFIX``). A path that fails
        mid-transfer (a relay dying, say) is replaced by a new session on another path, and the
        transfer resumes where the receiver's data ends. When the callee keeps the invite as a
        contact request, wait up to ``accept_wait_s`` for it to be accepted
        (:class:`NotAccepted` otherwise)."""
        try:
            ref = to if isinstance(to, UserRef) else parse_user_ref(to)
        except records.RecordError as exc:
            raise SendFailed(str(exc)) from None
        if not 0 < accept_wait_s <= MAX_ACCEPT_WAIT_S:
            raise SendFailed(f"the wait for acceptance is in (0, {MAX_ACCEPT_WAIT_S:g}] s")
        if not path.is_file():  # noqa: ASYNC240
            raise SendFailed(f"{path} is not a readable file")
        transfer_id = os.urandom(16)
        sha = await asyncio.to_thread(file_sha256, path)
        failed_relays: set[bytes] = set()
        slog = log.bind(peer=ref.name)
        errors: list[str] = []
        lost_a_path = False
        failures = 0
        for _ in range(MAX_RENEWED_SESSIONS):
            if failures >= MAX_SESSIONS_PER_SEND:
                break
            try:
                return await self._send_once(ref, path, transfer_id, sha, failed_relays,
                                             accept_wait_s, first_attempt=not lost_a_path)
            except LostMidTransfer as exc:
                lost_a_path = True
                if exc.at_relay_limit:
                    # not a failure: the relay ended the session where it said it would
                    slog.info("relay_session_limit", to_user=ref.name, reason=str(exc),
                              resuming=True)
                    continue
                failures += 1
                errors.append(str(exc))
                if exc.relay is not None:
                    failed_relays.add(exc.relay.key)
                    self.relay_history.failed(exc.relay.key)
                slog.warning("transfer_path_lost", to_user=ref.name, error=str(exc),
                             resuming=True)
            except NotAccepted:
                raise
            except SendFailed as exc:
                if not lost_a_path:
                    raise
                # what took the path down (a supernode) may be failing the peer over too
                failures += 1
                errors.append(str(exc))
                await asyncio.sleep(RESUME_RETRY_PAUSE_S)
        raise SendFailed(f"transfer failed on every path tried: {'; '.join(errors)}")

    async def _send_once(self, ref: UserRef, path: Path, transfer_id: bytes, sha: str,
                         failed_relays: set[bytes], accept_wait_s: float,
                         first_attempt: bool = False) -> dict[str, Any]:
        progress: dict[str, Any] = {"to": ref.name, "name": path.name, "sent": 0,
                                    "size": 0, "path": None, "state": "signalling"}
        self.sending.append(progress)
        try:
            async with self.open_path(ref, FILE, failed_relays, accept_wait_s,
                                      progress) as opened:
                stream, timeline, answer = opened.stream, opened.timeline, opened.answer
                progress.update(path=stream.path, state="sending")

                def update(sent: int, size: int) -> None:
                    progress.update(sent=sent, size=size)

                try:
                    done = await send_file(stream, path, update, transfer_id, sha,
                                           first_attempt=first_attempt)
                except PathLost as exc:
                    raise LostMidTransfer(
                        f"{stream.path} lost after {progress['sent']} bytes: {exc}",
                        stream.relay, at_relay_limit=transport_hooks.at_relay_limit(exc)
                    ) from None
                except TransferError as exc:
                    raise SendFailed(f"transfer failed: {exc}") from None
                return {"path": stream.path,
                        "technique": technique(timeline.selected,
                                               self._inbound_via_mapping(answer.candidates),
                                               self._inbound_on_lan(opened.session,
                                                                    answer.candidates)),
                        "relay": stream.relay.id if stream.relay else None,
                        "bytes": done.bytes, "seconds": round(done.seconds, 4),
                        "sha256": done.sha256, "resumed_from": done.resumed_from,
                        "timeline": timeline.events}
        finally:
            self.sending.remove(progress)

    @contextlib.asynccontextmanager
    async def open_path(self, ref: UserRef, purpose: str, failed_relays: set[bytes],
                        accept_wait_s: float, progress: dict[str, Any] | None = None
                        ) -> AsyncIterator[OpenedPath]:
        """Look ``ref`` up, invite it (``purpose``: :data:`FILE` or :data:`CALL`), wait for
        its answer, race the paths: the authenticated stream, closed on leaving the block.
        :class:`SendFailed` / :class:`NotAccepted` when there is none. ``progress`` (a
        ``sending`` entry) gets the wait's state."""
        session = self.attachment.primary_session()
        if session is None:
            raise SendFailed("not attached to a supernode yet")
        to_user = ref.name
        progress = {} if progress is None else progress
        setup = Timeline()
        # what does not depend on the callee (our candidates, the relay directory) is
        # fetched while the callee is looked up: one or two round trips fewer
        gathering = self._tasks.spawn(self.candidates(session))
        listing = self._tasks.spawn(self._relay_directory(session))
        try:
            target = await choose_target(self.attachment, self.contacts, ref)
        except BaseException:
            for early in (gathering, listing):  # they finish on their own (caches)
                early.add_done_callback(_retrieve)
            raise
        setup.add("looked up")
        s = Session(new_session_id(), to_user, initiator=True, peer_key=target.user_key)
        slog = log.bind(session=s.session_id.hex(), peer=to_user)
        s.answer = asyncio.get_running_loop().create_future()
        self.sessions[s.session_id] = s
        # the callee may dial us as soon as it has answered, before its answer reaches us
        self.listener.expect(s.session_id)
        try:
            local = await gathering
            setup.add("candidates")
            relays, secret = self._choose_relays(session, await listing, target, failed_relays)
            setup.add("relays ranked")
            me = self.config
            # the relay vouchers' expiry covers the whole wait for an answer and the race
            expires = int(time.time() + accept_wait_s) + VOUCHER_MARGIN_S
            sigs = caller_signatures(me.identity, relays, secret, target.user_key, expires)
            invite = sign_offer(Offer("invite", s.session_id, me.user, me.device,
                                      me.identity.public_key, to_user, s.keys.public, local,
                                      time.time(), purpose=purpose, relays=relays,
                                      relay_secret=secret,
                                      relay_expires=expires if sigs else 0, relay_sigs=sigs),
                                me.identity)
            assert s.answer is not None
            # the answer can come before our supernode's word on the invite's delivery
            # (between supernodes that word waits for the receiving one's checks)
            delivery = self._tasks.spawn(
                session.signal(to_user, invite.wire, to_device=target.device))
            await asyncio.wait([delivery, s.answer], return_when=asyncio.FIRST_COMPLETED)
            if delivery.done():
                try:
                    result = delivery.result()
                except SessionError as exc:
                    # our supernode went away (it may be the relay that just died): the
                    # send loop waits for the failover and tries again
                    raise SendFailed(f"{to_user} could not be signalled: {exc}") from None
                if not result.ok:
                    raise SendFailed(f"{to_user} could not be signalled: {result.reason}")
                setup.add("invite at our supernode")
            else:
                delivery.add_done_callback(_retrieve)
            # we dealt with this key: pin it, and the callee becomes a contact of ours
            self.contacts.dealt_with(to_user, target.user_key)
            answer = await await_answer(s.answer, s.pending, to_user, accept_wait_s,
                                        progress, slog)
            if answer.from_key != target.user_key:
                raise SendFailed(f"the answer is not signed by {to_user}'s key")
            if not answer.accept and answer.reason == DECLINED:
                raise NotAccepted(f"{to_user} declined the contact request")
            if not answer.accept:
                raise SendFailed(f"{to_user} declined: {answer.reason}")
            setup.add("answer")
            shared = s.keys.shared_secret(answer.ephemeral)
            transcript = transcript_hash(invite, answer)
            attempts = self._attempts(s, local, answer.candidates, shared, transcript)
            attempts.update(self._relay_attempts(s, invite, answer))
            staggers, prefer_direct_s = self._plan(local, answer.candidates, attempts, slog)
            try:
                stream, timeline = await connect_as_initiator(
                    attempts, self._securer(s, shared, transcript), staggers=staggers,
                    prefer_direct_s=prefer_direct_s, log=slog)
            except NoPath as exc:
                self._count_race(local, answer.candidates, exc.timeline, setup, slog)
                raise SendFailed(f"no path to {to_user}: {exc}") from None
            self._count_race(local, answer.candidates, timeline, setup, slog)
            try:
                yield OpenedPath(s, invite, answer, stream, timeline, shared, transcript)
            finally:
                await close_quietly(stream)
        finally:
            self.sessions.pop(s.session_id, None)
            self.listener.forget(s.session_id)

    @staticmethod
    async def _relay_directory(session: ClientSession) -> list[records.SignedRecord] | None:
        """The signed supernode directory (None when it cannot be had)."""
        try:
            return await session.directory()
        except SessionError as exc:
            log.info("relay_directory_unavailable", error=str(exc))
            return None

    def _choose_relays(
        self, session: ClientSession, directory: list[records.SignedRecord] | None,
        target: records.PresenceRecord, exclude: set[bytes],
    ) -> tuple[tuple[tuple[str, int, bytes], ...], bytes]:
        """The best few relays for this call, from the signed supernode directory."""
        if directory is None:
            return (), b""
        coords = {s.record.node_key: for_prediction(s.record.coords)
                  for s in directory if isinstance(s.record, records.SupernodeRecord)}
        ranked = relay_selector.rank(
            relay_selector.candidates(directory, RELAY_RATE_BPS),
            caller_rtt=self.attachment.relay_rtts(), caller_coords=coords.get(session.node_key),
            callee_coords=coords.get(target.supernode_key),
            callee_supernode=target.supernode_key, history=self.relay_history,
            exclude=exclude,
        )[: relay_selector.TOP]
        return tuple((c.host, c.port, c.node_key) for c in ranked), os.urandom(32)

    def _relay_attempts(self, s: Session, offer: Offer, answer: Offer) -> dict[str, Attempt]:
        """One attempt per relay the invite names: the first relay that admits the session
        and pairs both halves wins the race like any other path. The caller's hello carries
        the voucher both signed (``answer``, ours or the callee's, has the callee's
        countersignatures); where there is none (a peer that does not sign vouchers), a
        relay that is our own supernode is reserved over our attachment instead."""
        attempts: dict[str, Attempt] = {}
        vouchers = bool(offer.relay_sigs) and bool(answer.relay_sigs)
        own = self._own_reflexive()
        peer = offer.candidates.public_hosts()
        for i, (host, port, key) in enumerate(offer.relays):
            verdict = candidate_policy.decide(host, own, peer)
            if not verdict.dial:
                log.info("relay_dropped", session=s.session_id.hex(), host=host, port=port,
                         reason=verdict.reason)
                continue
            token = relay_selector.session_token(offer.relay_secret, key)
            voucher = voucher_for(offer, answer, i) if s.initiator else None
            attempts[f"relay-{i}"] = transport_hooks.relay_attempt(
                host, port, key, token, s.initiator, RELAY_RATE_BPS, voucher=voucher,
                reserve=None if vouchers else self._reserver(key))
        return attempts

    def _reserver(self, relay_key: bytes) -> transport_hooks.Reserve | None:
        """Reserving a relay session over our attachment, when the relay is our primary
        supernode (a reservation is made only where we are attached)."""
        session = self.attachment.primary_session()
        if session is None or session.node_key != relay_key:
            return None
        attached = session

        async def reserve(token_hash: bytes) -> None:
            try:
                reply = await attached.reserve_relay(token_hash)
            except SessionError as exc:
                raise PathLost(f"relay reservation failed: {exc}") from None
            if not reply.ok:
                raise PathLost(f"relay reservation refused: {reply.reason}")

        return reserve

    # -- callee ---------------------------------------------------------------------------------

    def on_signal(self, msg: SignalDelivery) -> bool:
        """Handle a delivered invite or answer; False when the payload is not ours."""
        try:
            offer = open_offer(msg.payload)
        except SignallingError as exc:
            if msg.payload[:1] in (b"\x92",):
                log.warning("offer_refused", from_user=msg.from_user, reason=str(exc))
                return True
            return False
        if offer.from_key != msg.from_key or offer.from_user != msg.from_user \
                or offer.to_user != self.config.user:
            log.warning("offer_refused", from_user=msg.from_user, reason="misdirected")
            return True
        if offer.kind == "answer":
            s = self.sessions.get(offer.session_id)
            if s is None or s.answer is None or s.answer.done():
                return True
            if not offer.accept and offer.reason == PENDING and offer.from_key == s.peer_key:
                if not s.pending.is_set():
                    log.info("answer_pending", session=offer.session_id.hex(),
                             peer=offer.from_user)
                s.pending.set()
                return True
            s.answer.set_result(offer)
            return True
        self._tasks.spawn(self._on_invite(offer))
        return True

    async def _on_invite(self, invite: Offer) -> None:
        """Answer ``invite`` now, keep it as a contact request (answered "pending", no
        address), or refuse it (no answer at all)."""
        if invite.session_id in self.sessions:
            return
        slog = log.bind(session=invite.session_id.hex(), peer=invite.from_user)
        if invite.purpose == CALL and self.call_handler is None:
            slog.info("call_refused", reason="this client takes no calls")
            return
        setup = Timeline()
        verdict = await vet_invite(self.attachment, self.contacts, invite, slog)
        setup.add("invite vetted")
        if verdict == REQUEST:
            await self._answer_without_address(invite, PENDING)
        elif verdict == ANSWER:
            await self._answer(invite, setup)

    def answer_request(self, invite: Offer) -> None:
        """The user accepted the request ``invite``: answer it (the caller may still wait)."""
        self._tasks.spawn(self._answer(invite))

    def decline_request(self, invite: Offer) -> None:
        """The user declined the request ``invite``: answer "declined", with no address."""
        self._tasks.spawn(self._answer_without_address(invite, DECLINED))

    async def _answer_without_address(self, invite: Offer, reason: str) -> None:
        """A signed answer ``accept=false`` with ``reason`` and no candidates: it tells the
        caller where its invite stands and reveals no address of ours."""
        session = self.attachment.primary_session()
        if session is None:
            return
        me = self.config
        answer = answer_without_address(me.identity, me.user, me.device, invite, reason)
        try:
            result = await session.signal(invite.from_user, answer.wire,
                                          to_device=invite.from_device)
        except SessionError as exc:
            log.info("answer_not_delivered", to_user=invite.from_user, reason=str(exc))
            return
        if not result.ok:
            log.info("answer_not_delivered", to_user=invite.from_user, reason=result.reason)

    async def _answer(self, invite: Offer, setup: Timeline | None = None) -> None:
        """Answer ``invite`` with our candidates, race the paths, receive the file.
        ``setup`` holds the steps since the invite arrived (when it is answered at once)."""
        session = self.attachment.primary_session()
        if session is None or invite.session_id in self.sessions:
            return
        slog = log.bind(session=invite.session_id.hex(), peer=invite.from_user)
        setup = setup or Timeline()
        s = Session(invite.session_id, invite.from_user, initiator=False)
        self.sessions[s.session_id] = s
        entry: dict[str, Any] = {"from": invite.from_user, "started_at": time.time(),
                                 "first_byte_at": None, "done_at": None, "path": None}
        early = EarlyPunches()
        try:
            local = await self.candidates(session)
            setup.add("candidates")
            me = self.config
            sigs = callee_signatures(me.identity, invite, time.time())
            answer = sign_offer(Offer("answer", s.session_id, me.user, me.device,
                                      me.identity.public_key, invite.from_user, s.keys.public,
                                      local, time.time(),
                                      relay_expires=invite.relay_expires if sigs else 0,
                                      relay_sigs=sigs), me.identity)
            shared = s.keys.shared_secret(invite.ephemeral)
            transcript = transcript_hash(invite, answer)
            attempts = self._attempts(s, local, invite.candidates, shared, transcript)
            attempts.update(self._relay_attempts(s, invite, answer))
            # the race runs while the answer is on its way: our dials, probes and relay half
            # start a round trip earlier; the caller selects a path only once it has the
            # answer, and nothing is received before its SELECT (which, authenticated with
            # the answer's keys, also proves the answer arrived: no need to wait for our
            # supernode's word on its delivery, which can take seconds between supernodes)
            attempts = early.start(attempts)
            racing = asyncio.ensure_future(connect_as_responder(
                attempts, self._securer(s, shared, transcript),
                staggers=self._plan(local, invite.candidates, attempts, slog)[0], log=slog))
            delivery = asyncio.ensure_future(session.signal(
                invite.from_user, answer.wire, to_device=invite.from_device))
            try:
                await asyncio.wait([racing, delivery], return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                _abandon(racing)
                delivery.cancel()
                raise
            if delivery.done() and not racing.done():
                setup.add("answer at our supernode")
                if delivery.exception() is not None or not delivery.result().ok:
                    _abandon(racing)
                    if (error := delivery.exception()) is not None:
                        raise error
                    slog.warning("answer_not_delivered", to_user=invite.from_user,
                                 reason=delivery.result().reason)
                    return
            delivery.add_done_callback(_retrieve)
            try:
                stream, timeline = await racing
            except NoPath as exc:
                self._count_race(local, invite.candidates, exc.timeline, setup, slog)
                raise
            self._count_race(local, invite.candidates, timeline, setup, slog)
            if invite.purpose == CALL and self.call_handler is not None:
                try:
                    await self.call_handler(OpenedPath(s, invite, answer, stream, timeline,
                                                       shared, transcript))
                finally:
                    await close_quietly(stream)
                return
            entry["path"] = stream.path
            entry["technique"] = technique(timeline.selected,
                                           self._inbound_via_mapping(invite.candidates),
                                           self._inbound_on_lan(s, invite.candidates))
            self._remember(entry)
            try:
                done = await receive_file(stream, self.config.inbox, partials=self.partials,
                                          sender=invite.from_user, guard=self.inbox_guard)
            finally:
                await close_quietly(stream)
            entry.update(name=done.name, bytes=done.bytes, sha256=done.sha256,
                         first_byte_at=done.first_byte_at, done_at=time.time())
            slog.info("file_received", from_user=invite.from_user, name=done.name,
                     bytes=done.bytes, path=stream.path)
        except (NoPath, TransferError, SessionError, SignallingError, PathLost) as exc:
            entry["error"] = str(exc)
            self._remember(entry)
            slog.warning("incoming_transfer_failed", from_user=invite.from_user, error=str(exc))
        finally:
            early.release()
            self.sessions.pop(s.session_id, None)
            self.listener.forget(s.session_id)

    def _remember(self, entry: dict[str, Any]) -> None:
        if entry not in self.transfers:
            self.transfers.append(entry)
            del self.transfers[:-MAX_RECENT]


def _abandon(racing: asyncio.Future[tuple[MediaStream, Timeline]]) -> None:
    """Stop a race nobody will use; close the path it may have selected meanwhile."""
    racing.cancel()

    def closed(task: asyncio.Future[tuple[MediaStream, Timeline]]) -> None:
        if not task.cancelled() and task.exception() is None:
            close_later(task.result()[0])

    racing.add_done_callback(closed)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background task's outcome as seen (nobody awaits it any more)."""
    if not task.cancelled():
        task.exception()


async def close_quietly(stream: ByteStream) -> None:
    with contextlib.suppress(Exception):
        await stream.close()

"""The client's live sessions to supernodes: the attachment (primary) and the warm backup.

:class:`Links` holds both and answers what other parts ask of them: the primary session,
the supernodes' addresses, and user lookups (through the primary, else the backup).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from overlay.attach import AttachOk, Message, Moving, Refused, RefuseReason, SignalDelivery
from overlay.attach.adapter import ClientSession, SessionError
from overlay.attach.messages import Alternative
from overlay.client.attach_policy import Candidate, EndReason
from overlay.client.control import JSONObject
from overlay.client.lookup import newest_per_device
from overlay.core.logs import get_logger
from overlay.core.records import SignedRecord

log = get_logger(__name__)


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
            self._end(Ended(EndReason.REFUSED, f"{refuse_label(msg.reason_code)}: "
                            f"{msg.message}", msg.alternatives))
        elif isinstance(msg, SignalDelivery):
            if self.on_signal is not None:
                self.on_signal(msg)
        else:
            log.bind(supernode=self.candidate.address).debug(
                "unsolicited_message", type=type(msg).__name__)

    def _end(self, ended: Ended) -> None:
        if not self.ended.done():
            self.ended.set_result(ended)


@dataclass(frozen=True)
class AttemptFailed:
    """An attachment attempt that did not work (a result, not an exception)."""

    error: str
    alternatives: tuple[Alternative, ...] = ()


def refuse_label(code: int) -> str:
    try:
        return RefuseReason(code).name
    except ValueError:
        return str(code)


def alt_list(alternatives: tuple[Alternative, ...]) -> list[str]:
    return [f"{a.host}:{a.port}" for a in alternatives]


class Links:
    """The attachment and the backup, and the events that say when they change."""

    def __init__(self) -> None:
        self.primary: Attachment | None = None
        self.backup: Link | None = None
        #: set while attached
        self.attached = asyncio.Event()
        #: set whenever the primary changes (the backup keeper waits on it)
        self.primary_changed = asyncio.Event()

    def set_primary(self, att: Attachment | None) -> None:
        self.primary = att
        if att is None:
            self.attached.clear()
        else:
            self.attached.set()
        self.primary_changed.set()

    def live_primary(self) -> Attachment | None:
        return self.primary if self.primary is not None and self.primary.alive else None

    def live_backup(self) -> Link | None:
        return self.backup if self.backup is not None and self.backup.alive else None

    def live(self) -> list[Link]:
        """The live ones, primary first."""
        return [link for link in (self.primary, self.backup)
                if link is not None and link.alive]

    def primary_session(self) -> ClientSession | None:
        """The attached session, once the supernode accepted us."""
        att = self.primary
        return att.session if att is not None and att.alive and att.ok is not None else None

    def supernode_udp_addresses(self) -> list[tuple[tuple[str, int], bytes]]:
        """Primary and backup supernodes as (UDP address, node key), for binding requests."""
        return [((link.candidate.host, link.candidate.port), link.candidate.node_key)
                for link in self.live()]

    async def lookup(self, user: str, timeout: float) -> tuple[list[SignedRecord], str]:
        """Verified presence records for ``user`` via the primary (else the backup). A link
        that fails is not asked again, but the links are looked at anew after each failure:
        a failover meanwhile (the backup's session closed as it is promoted to primary) gives
        a new session to ask."""
        errors = []
        asked: list[ClientSession] = []  # the sessions themselves: an id may be reused
        while True:
            link = next((ln for ln in self.live()
                         if not any(ln.session is s for s in asked)), None)
            if link is None:
                break
            asked.append(link.session)
            try:
                found = await link.session.lookup(user, timeout=timeout)
            except SessionError as exc:
                errors.append(f"{link.candidate.address}: {exc}")
                continue
            return newest_per_device(found), link.candidate.address
        raise SessionError("; ".join(errors) or "not connected to any supernode")

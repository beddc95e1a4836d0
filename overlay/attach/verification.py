"""The record checks of an attachment session: what a supernode may publish for a client
(``Attach``: presence and name claim) and which looked-up records a client may believe
(``LookupResponse``)."""

from __future__ import annotations

from overlay.attach.errors import AttachRejected
from overlay.attach.handshake import HandshakeResult
from overlay.attach.messages import Attach, LookupResponse
from overlay.core.records import NameClaim, PresenceRecord, RecordError, SignedRecord, verify


def verify_attach(
    attach: Attach, result: HandshakeResult, *, now: float | None = None
) -> SignedRecord:
    """Supernode side: the verified presence record this session may publish.

    The record must verify (``overlay.core.records.verify``), be an online presence record
    signed by the session's proven client key, for the hello's user and device, naming this
    supernode. Raises :class:`AttachRejected`; answer it with
    ``Refused(RefuseReason.BAD_RECORD, ...)``.
    """
    if result.lookup_only:
        raise AttachRejected("a lookup-only session cannot attach")
    try:
        signed = verify(attach.presence_record, now=now)
    except RecordError as exc:
        raise AttachRejected(f"presence record refused ({exc.reason}): {exc}") from exc
    rec = signed.record
    if not isinstance(rec, PresenceRecord):
        raise AttachRejected("an Attach carries a presence record")
    if rec.user_key != result.client_key:
        raise AttachRejected("presence record is signed by another key than the session's")
    if rec.user != result.user or rec.device != result.device:
        raise AttachRejected(
            f"presence record is for {rec.user}/{rec.device}, "
            f"the session for {result.user}/{result.device}"
        )
    if not rec.online or rec.supernode_key != result.node_key:
        raise AttachRejected("presence record does not name this supernode")
    return signed


def verify_attach_claim(
    attach: Attach, result: HandshakeResult, *, now: float | None = None
) -> SignedRecord | None:
    """Supernode side: the verified name claim this session may publish (None: the Attach
    carries none). It must be a name claim for the hello's user signed by the session's
    proven client key. Raises :class:`AttachRejected`."""
    if not attach.name_claim:
        return None
    try:
        signed = verify(attach.name_claim, now=now)
    except RecordError as exc:
        raise AttachRejected(f"name claim refused ({exc.reason}): {exc}") from exc
    rec = signed.record
    if not isinstance(rec, NameClaim):
        raise AttachRejected("an Attach's second record is a name claim")
    if rec.user_key != result.client_key or rec.user != result.user:
        raise AttachRejected("the name claim is not this session's user and key")
    return signed


def verify_lookup_response(
    response: LookupResponse, user: str, *, now: float | None = None, claims: bool = False
) -> list[SignedRecord]:
    """Client side: the records in ``response`` that verify and are presence for ``user``
    (with ``claims``, name claims for ``user`` too).

    Records that fail are dropped, not fatal: a supernode relays what the DHT holds.
    """
    kinds: tuple[type, ...] = (PresenceRecord, NameClaim) if claims else (PresenceRecord,)
    good: list[SignedRecord] = []
    for wire in response.records:
        try:
            signed = verify(wire, now=now)
        except RecordError:
            continue
        if isinstance(signed.record, kinds) and signed.record.claimed_name == user:
            good.append(signed)
    return good

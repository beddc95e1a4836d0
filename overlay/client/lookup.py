"""Looking users up: over TCP at public nodes with no identity of one's own, keeping the
newest record of each device, and who owns the name in an answer (:func:`name_keys`)."""

from __future__ import annotations

from overlay.attach.adapter import ClientSession, SessionError
from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.resolver import resolve
from overlay.core.user_ref import UserRef


async def lookup_via(
    addrs: list[tuple[str, int]], name: str, timeout: float, claims: bool = False
) -> tuple[list[records.SignedRecord], str]:
    """Ask each node in turn over TCP; return the verified records (presence; with ``claims``
    name claims too) and who answered."""
    identity = Identity.generate()  # throwaway: a lookup publishes nothing
    errors = []
    for host, port in await resolve(addrs):
        try:
            session = await ClientSession.connect(
                host, port, identity, expected_node_key=None, lookup_only=True, timeout=timeout
            )
        except SessionError as exc:
            errors.append(str(exc))
            continue
        try:
            return await session.lookup(name, timeout=timeout, claims=claims), f"{host}:{port}"
        except SessionError as exc:
            errors.append(f"{host}:{port}: {exc}")
        finally:
            session.close("done")
    raise SessionError("; ".join(errors) or "no address resolved")


def newest_per_device(found: list[records.SignedRecord]) -> list[records.SignedRecord]:
    """The newest record of each device (by seq), most recently issued first."""
    best: dict[tuple[bytes, str], records.SignedRecord] = {}
    for signed in found:
        current = best.get(signed.slot)
        if current is None or signed.seq > current.seq:
            best[signed.slot] = signed
    return sorted(best.values(), key=lambda s: s.record.issued_at, reverse=True)


def name_keys(ref: UserRef, found: list[records.SignedRecord]) -> tuple[
        list[records.SignedRecord], list[bytes]]:
    """The records ``ref`` accepts (its key prefix, if any) and their signer keys, sorted.

    A supernode answers only the owner's records when the name's holders decide; several keys
    in one answer are a conflict, for the caller to show, never to resolve silently.
    """
    kept = [s for s in found if s.record.claimed_name == ref.name and ref.matches(s.record.signer)]
    return kept, sorted({s.record.signer for s in kept})

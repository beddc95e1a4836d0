"""Who owns a name: the one key the network binds a user name to.

:func:`name_owner` is the question every layer asks before trusting a record, invite or signal
"from alice": it answers with :class:`NameOwner` (the key, or a conflict with every key seen).
Today's rule (to be replaced by the majority of the name's closest holders, issue 11): the
verified records for the name are signed by one key (the owner), by none (unknown), or by
several (a conflict, never resolved silently).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from overlay.core import records
from overlay.core.records import SignedRecord
from overlay.dht.node import DHTNode


@dataclass(frozen=True)
class NameOwner:
    name: str
    #: the owner's key; None when nobody holds the name, or in a conflict
    key: bytes | None
    #: every key seen for the name (one when owned, several in a conflict)
    keys: tuple[bytes, ...]

    @property
    def conflict(self) -> bool:
        return self.key is None and len(self.keys) > 1


def owner_from_records(name: str, found: Iterable[SignedRecord]) -> NameOwner:
    keys = sorted({s.record.signer for s in found if s.record.claimed_name == name})
    return NameOwner(name, keys[0] if len(keys) == 1 else None, tuple(keys))


async def name_owner(dht: DHTNode, name: str) -> NameOwner:
    """Ask the network who owns ``name`` (records verified on the way in)."""
    return owner_from_records(name, await dht.get(records.user_key(name)))

"""Who owns a name: the one key the network binds a user name to.

:func:`name_owner` is the question every layer asks before trusting a record, invite or signal
"from alice": it answers with :class:`NameOwner` (the key, or a conflict with every key seen).

The rule: the holders of the name's DHT key each vote for the key that signed the records
they hold for the name (an honest holder holds one key's records only: its storage refuses
other keys while a live claim or presence exists; a holder answering with several keys votes
for none). The key with more than half of the votes of the closest holders that answered owns
the name; a single key seen anywhere owns it trivially; anything else (a tie, no majority) is
a conflict, never resolved silently. A name claim (31 days) keeps holders voting while the
owner is offline, so an impostor's records at nodes that did not hold the name (a fresh node,
a Sybil, the impostor's own supernode) stay a minority.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from overlay.core import records
from overlay.core.records import RecordKind, SignedRecord
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


@dataclass(frozen=True)
class NameLookup:
    owner: NameOwner
    #: the owner's records when decided; every key's in a conflict. Claims first, then the
    #: newest.
    records: tuple[SignedRecord, ...]


def owner_from_records(name: str, found: Iterable[SignedRecord]) -> NameOwner:
    """The owner as seen in one merged answer (e.g. a supernode's ``LookupResponse``): one
    signer key is the owner, several are a conflict."""
    keys = sorted({s.record.signer for s in found if s.record.claimed_name == name})
    return NameOwner(name, keys[0] if len(keys) == 1 else None, tuple(keys))


def decide(name: str, holders: Mapping[bytes, Iterable[SignedRecord]]) -> NameOwner:
    """The majority rule over each holder's own answer (see the module docstring)."""
    votes: Counter[bytes] = Counter()
    voters = 0
    seen: set[bytes] = set()
    for held in holders.values():
        signers = {s.record.signer for s in held if s.record.claimed_name == name}
        if not signers:
            continue
        voters += 1
        seen |= signers
        if len(signers) == 1:
            votes[next(iter(signers))] += 1
    keys = tuple(sorted(seen))
    if len(keys) == 1:
        return NameOwner(name, keys[0], keys)
    ranked = votes.most_common(2)
    if ranked and 2 * ranked[0][1] > voters:
        return NameOwner(name, ranked[0][0], (ranked[0][0],))
    return NameOwner(name, None, keys)


def ordered(found: Iterable[SignedRecord]) -> list[SignedRecord]:
    """Name claims first (they say who owns the name), then the most recently issued."""
    return sorted(found, key=lambda s: (s.record.kind != RecordKind.NAME_CLAIM,
                                        -s.record.issued_at))


async def lookup_name(dht: DHTNode, name: str) -> NameLookup:
    """Ask the network for ``name``: its owner and the records that count (verified)."""
    answers = await dht.get_answers(records.user_key(name))
    owner = decide(name, answers.holders)
    found = [s for s in answers.records if s.record.claimed_name == name]
    if owner.key is not None:
        found = [s for s in found if s.record.signer == owner.key]
    return NameLookup(owner, tuple(ordered(found)))


async def name_owner(dht: DHTNode, name: str) -> NameOwner:
    """Ask the network who owns ``name`` (records verified on the way in)."""
    return (await lookup_name(dht, name)).owner

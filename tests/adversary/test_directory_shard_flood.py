"""One network's supernodes across the directory's shards (issue 12's per-/24 cap, issue 14's
shards).

The attacker has one IPv4 /24 -- one IP is enough: as many ports and throwaway keys as she
likes -- and real servers there that prove their keys, so every dial-back succeeds. She signs
12 supernode records with fresh keys and stores each under the directory key the rules give
it, at a holder that holds every directory key (as every node does in a network of fewer than
k public nodes). What must hold: however the keys fall, at most 4 of her supernodes are listed
in the whole directory (``listed_per_network``), as before the directory had shards -- not 4
per shard.
"""

from __future__ import annotations

from overlay.core import records
from overlay.core.directory_keys import SHARD_KEYS
from overlay.core.identity import Identity
from overlay.dht.directory import DirectoryLimits
from overlay.dht.storage import RecordStorage, StorageLimits

T0 = 1_800_000_000.0
SERVERS = 12
PER_NETWORK = 4


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


def test_one_network_gets_at_most_n_supernodes_listed_across_every_shard() -> None:
    clock = Clock()
    holder = RecordStorage(StorageLimits(directory=DirectoryLimits(
        listed_per_network=PER_NETWORK, target_dial_burst=SERVERS)), clock=clock)
    holder.directory.enable_dial_backs("203.0.113.1")
    for port in range(SERVERS):
        rec = records.supernode(Identity.generate(), "198.51.100.7", 5000 + port, seq=1,
                                lifetime_s=3600, now=T0)
        holder.put(rec.dht_key, rec.wire, source="198.51.100.7")
    # her servers answer every dial-back with the right key
    while dials := holder.directory.dials_due(clock.now):
        for dial in dials:
            holder.directory.dial_done(dial, True, clock.now)
    served = {s.record.node_key for key in SHARD_KEYS for s in holder.answer(key, 48)}
    assert len(served) <= PER_NETWORK, (
        f"{len(served)} supernodes of one /24 listed across the directory's shards")

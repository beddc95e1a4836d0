"""Which supernodes to probe first: the ones the client's own Vivaldi position puts nearest.

Sans-IO. A client does not take part in Vivaldi, but it measures round trips to supernodes
whose coordinates their signed records carry; :func:`overlay.core.vivaldi.fit` places it among
them (as Vivaldi places a node from its samples, with the supernodes held still). A
supernode's directory lists the supernodes nearest to *that supernode* first, which for a
client attached far away (its first choice was made before coordinates settled) are not the
ones near the client: tools/sim found late refines that never probed their nearest supernode
for that reason. The probe order takes the estimate's nearest and the listing's first in turn,
so a poor estimate (few or unsettled landmarks) costs only half of the probes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from overlay.client.attach_policy import Candidate
from overlay.core.vivaldi import Coordinate, fit


def estimated_nearest(cands: Sequence[Candidate], coords: Mapping[bytes, Coordinate],
                      rtts: Mapping[bytes, float], rng: random.Random) -> list[Candidate]:
    """``cands`` with a known coordinate, nearest first by the position that ``rtts`` (the
    client's measured round trips, by node key) give the client among ``coords``; [] when
    fewer than :data:`~overlay.core.vivaldi.MIN_LANDMARKS` measured supernodes have one."""
    me = fit([(coords[key], rtt) for key, rtt in sorted(rtts.items()) if key in coords], rng)
    if me is None:
        return []
    placed = [c for c in cands if c.node_key in coords]
    return sorted(placed, key=lambda c: me.distance(coords[c.node_key]))


def probe_order(listed: Sequence[Candidate], estimated: Sequence[Candidate]
                ) -> list[Candidate]:
    """``estimated`` and ``listed`` taken in turn (the estimate first), each candidate once."""
    out: list[Candidate] = []
    seen: set[bytes] = set()
    for i in range(max(len(listed), len(estimated))):
        for source in (estimated, listed):
            if i < len(source) and source[i].node_key not in seen:
                seen.add(source[i].node_key)
                out.append(source[i])
    return out

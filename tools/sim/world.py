"""The world model: where hosts are, how far apart, how lossy the path.

Six regions with a share of the world's internet users each (:data:`REGIONS`, rounded from
ITU/Internet World Stats 2023 figures: Asia about half). A host is placed in a region drawn
by those weights and gets an access-link round trip of its own (home broadband / datacentre
last mile), uniform in [:data:`ACCESS_RTT_MS`]. The round trip between two hosts is

    RTT(a, b) = base(region a, region b) * spread(a, b) + access(a) + access(b)

clamped to [:data:`MIN_RTT_MS`, :data:`MAX_RTT_MS`] = [5, 300] ms, where ``base`` is the
typical RTT between the regions' population centres (:data:`BASE_RTT_MS`, rounded medians
from public city-to-city ping tables such as WonderNetwork's and RIPE Atlas reports) and
``spread`` is a per-pair factor in [0.75, 1.25] (distances inside a region differ; routes are
not straight lines), fixed for the pair and a pure function of the seed and the two hosts.

One-way delay is RTT/2 in each direction, the same for every packet of a pair: no jitter and
no queueing (bandwidth is not modelled), so packets between two hosts stay in order.
Datagrams are lost independently with probability ``loss`` (default 1 %, a typical residential
path); streams are reliable (TCP's retransmissions are not modelled, only its ordering).

Everything random comes from one ``random.Random(seed)``: the same seed and the same host
creation order give the same world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: region name -> share of hosts placed there
REGIONS: dict[str, float] = {
    "north_america": 0.12,
    "south_america": 0.09,
    "europe": 0.17,
    "africa": 0.12,
    "asia": 0.48,
    "oceania": 0.02,
}
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)

#: typical round trip between two regions, ms (symmetric; the diagonal is within a region)
_BASE_PAIRS: dict[tuple[str, str], float] = {
    ("north_america", "north_america"): 40, ("north_america", "south_america"): 130,
    ("north_america", "europe"): 90, ("north_america", "africa"): 200,
    ("north_america", "asia"): 170, ("north_america", "oceania"): 160,
    ("south_america", "south_america"): 50, ("south_america", "europe"): 200,
    ("south_america", "africa"): 280, ("south_america", "asia"): 280,
    ("south_america", "oceania"): 250,
    ("europe", "europe"): 30, ("europe", "africa"): 150, ("europe", "asia"): 180,
    ("europe", "oceania"): 270,
    ("africa", "africa"): 80, ("africa", "asia"): 250, ("africa", "oceania"): 280,
    ("asia", "asia"): 70, ("asia", "oceania"): 130,
    ("oceania", "oceania"): 30,
}
BASE_RTT_MS: dict[tuple[str, str], float] = {
    **_BASE_PAIRS, **{(b, a): ms for (a, b), ms in _BASE_PAIRS.items()}
}
#: a host's own last-mile round trip, ms (added once per end)
ACCESS_RTT_MS = (1.0, 20.0)
MIN_RTT_MS = 5.0
MAX_RTT_MS = 300.0
SPREAD = (0.75, 1.25)
DEFAULT_LOSS = 0.01


@dataclass(frozen=True)
class Place:
    """Where one host is: its region (an index into :data:`REGION_NAMES`) and its access
    link's round trip."""

    region: int
    access_ms: float


class World:
    """Places hosts and answers "how long from a to b" and "is this datagram lost"."""

    def __init__(self, seed: int, loss: float = DEFAULT_LOSS) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        self.seed = seed
        self.loss = loss
        self.rng = random.Random(seed)
        self._weights = [REGIONS[name] for name in REGION_NAMES]
        self._base = [[BASE_RTT_MS[(a, b)] for b in REGION_NAMES] for a in REGION_NAMES]
        self._salt = random.Random(seed ^ 0x5EED).getrandbits(64)

    def place(self, region: str | None = None) -> Place:
        """A new host's place (region drawn by population weight unless given)."""
        if region is None:
            index = self.rng.choices(range(len(REGION_NAMES)), self._weights)[0]
        else:
            index = REGION_NAMES.index(region)
        return Place(index, self.rng.uniform(*ACCESS_RTT_MS))

    def rtt_s(self, a: Place, a_id: int, b: Place, b_id: int) -> float:
        """Round trip between hosts ``a`` and ``b`` (ids: their creation indices), seconds."""
        lo, hi = (a_id, b_id) if a_id <= b_id else (b_id, a_id)
        spread = SPREAD[0] + (SPREAD[1] - SPREAD[0]) * _unit_hash(lo, hi, self._salt)
        ms = self._base[a.region][b.region] * spread + a.access_ms + b.access_ms
        return min(max(ms, MIN_RTT_MS), MAX_RTT_MS) / 1000.0

    def one_way_s(self, a: Place, a_id: int, b: Place, b_id: int) -> float:
        return self.rtt_s(a, a_id, b, b_id) / 2.0

    def lost(self) -> bool:
        """Whether the next datagram is lost (one draw from the world's RNG)."""
        return self.loss > 0.0 and self.rng.random() < self.loss


def _unit_hash(a: int, b: int, salt: int) -> float:
    """A fixed pseudo-random number in [0, 1) for the pair (a, b) (splitmix64 finaliser)."""
    x = (a * 0x9E3779B97F4A7C15 + b * 0xBF58476D1CE4E5B9 + salt) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x / 2.0**64

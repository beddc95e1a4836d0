"""Churn models: when each supernode and each user is online.

A model draws, per peer, alternating online and offline periods from lognormal distributions
(session lengths in P2P measurements are heavy-tailed; lognormal fits Skype's and Kad's well).
``median`` is the distribution's median, ``sigma`` the standard deviation of its logarithm.

* ``none``: every supernode stays up from its join to the end, every user stays online.
* ``skype``: supernode sessions with median 5.5 h (Guha, Daswani, Jain, "An Experimental
  Study of the Skype Peer-to-Peer VoIP System", IPTPS 2006: supernode session median 5.5 h);
  40 % of supernodes have a single session (they leave and never come back within the run);
  the others come back after an offline period (median 5.5 h too: an assumption, the paper
  gives no figure we rely on). Users: sessions with median 1 h, offline periods median 2 h
  (assumptions in the range of the Skype client measurements). sigma = 1.0 throughout.
* ``harsh``: ``skype`` four times faster (every median / 4), and 10 % of the supernodes that
  are up at the run's midpoint fail at once then (a mass failure; they do not come back).

Bootstrap nodes never churn (a deployment's bootstrap hosts are run for availability).
Every draw comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

HOUR = 3600.0


@dataclass(frozen=True)
class Periods:
    """Lognormal online/offline periods."""

    online_median_s: float
    offline_median_s: float
    sigma: float = 1.0

    def online(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.online_median_s), self.sigma)

    def offline(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.offline_median_s), self.sigma)


@dataclass(frozen=True)
class ChurnModel:
    name: str
    #: None: supernodes never leave
    supernodes: Periods | None
    single_session_share: float
    #: None: users never go offline
    users: Periods | None
    #: (fraction of the run at which it strikes, share of the up supernodes that fail)
    mass_failure: tuple[float, float] | None = None

    def schedule(self, periods: Periods | None, start: float, end: float,
                 rng: random.Random, single_session: bool = False) -> list[tuple[float, float]]:
        """Online intervals from ``start`` (online then) up to ``end``."""
        if periods is None:
            return [(start, end)]
        out: list[tuple[float, float]] = []
        t = start
        while t < end:
            stop = min(end, t + periods.online(rng))
            out.append((t, stop))
            if single_session:
                break
            t = stop + periods.offline(rng)
        return out

    def supernode_sessions(self, join_at: float, end: float,
                           rng: random.Random) -> list[tuple[float, float]]:
        single = rng.random() < self.single_session_share
        return self.schedule(self.supernodes, join_at, end, rng, single)

    def user_sessions(self, start: float, end: float,
                      rng: random.Random) -> list[tuple[float, float]]:
        return self.schedule(self.users, start, end, rng)


SKYPE = ChurnModel(
    "skype",
    supernodes=Periods(5.5 * HOUR, 5.5 * HOUR),
    single_session_share=0.4,
    users=Periods(1.0 * HOUR, 2.0 * HOUR),
)
HARSH = ChurnModel(
    "harsh",
    supernodes=Periods(5.5 * HOUR / 4, 5.5 * HOUR / 4),
    single_session_share=0.4,
    users=Periods(1.0 * HOUR / 4, 2.0 * HOUR / 4),
    mass_failure=(0.5, 0.10),
)
NONE = ChurnModel("none", supernodes=None, single_session_share=0.0, users=None)
MODELS: dict[str, ChurnModel] = {m.name: m for m in (NONE, SKYPE, HARSH)}

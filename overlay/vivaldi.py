"""Vivaldi network coordinates (Dabek et al., SIGCOMM 2004), sans-IO.

Each supernode keeps a 2-D coordinate plus a height (the access-link delay) and moves it after
every round-trip sample to a peer whose coordinate it knows, so that distances between
coordinates predict round-trip times. Coordinates travel in signed supernode records
(``coords = (x, y, height, error)``, seconds), which lets a caller estimate the latency between
a relay and the callee's supernode without anyone probing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

CE = 0.25  # error weight
CC = 0.25  # coordinate step
MIN_HEIGHT = 1e-5
INITIAL_ERROR = 1.0


@dataclass(frozen=True)
class Coordinate:
    x: float = 0.0
    y: float = 0.0
    height: float = MIN_HEIGHT
    error: float = INITIAL_ERROR

    def distance(self, other: Coordinate) -> float:
        """Predicted round-trip time in seconds."""
        return math.hypot(self.x - other.x, self.y - other.y) + self.height + other.height

    def to_record(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.height, self.error)

    @classmethod
    def from_record(cls, coords: tuple[float, ...]) -> Coordinate | None:
        if len(coords) != 4 or not all(math.isfinite(c) for c in coords):
            return None
        x, y, height, error = coords
        if height < 0 or not 0 <= error <= 10 or abs(x) > 10 or abs(y) > 10 or height > 10:
            return None  # implausible: seconds, not hours
        return cls(x, y, max(height, MIN_HEIGHT), error)


def update(me: Coordinate, peer: Coordinate, rtt_s: float,
           rng: random.Random | None = None) -> Coordinate:
    """Move ``me`` after measuring ``rtt_s`` to a node at ``peer``."""
    if not (0 < rtt_s < 10):
        return me
    weight = me.error / max(me.error + peer.error, 1e-9)
    predicted = me.distance(peer)
    sample_error = abs(predicted - rtt_s) / rtt_s
    error = min(sample_error * CE * weight + me.error * (1 - CE * weight), INITIAL_ERROR)
    delta = CC * weight
    dx, dy = me.x - peer.x, me.y - peer.y
    norm = math.hypot(dx, dy)
    if norm < 1e-9:  # same spot: push apart in a random direction
        angle = (rng or random).uniform(0, 2 * math.pi)
        dx, dy, norm = math.cos(angle), math.sin(angle), 1.0
    force = delta * (rtt_s - predicted)
    x = me.x + force * dx / norm
    y = me.y + force * dy / norm
    height = max(MIN_HEIGHT, me.height + force * (me.height + peer.height) / max(predicted, 1e-9))
    return Coordinate(x, y, height, error)

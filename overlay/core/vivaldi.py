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


#: a coordinate whose error is still this high has not learnt anything yet: do not predict
UNSETTLED_ERROR = 0.9


def for_prediction(coords: tuple[float, ...]) -> Coordinate | None:
    """A record's coordinate when it is good enough to estimate latencies with, else None."""
    c = Coordinate.from_record(coords)
    return c if c is not None and c.error < UNSETTLED_ERROR else None


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


#: samples kept per peer; the coordinate moves by the smallest (queueing only ever adds delay)
SAMPLES_PER_PEER = 4
#: peers remembered at most (the oldest is forgotten first)
MAX_PEERS = 256


class CoordinateKeeper:
    """One node's coordinate and the recent round-trip samples that move it.

    Each sample to a peer is filtered through the minimum of that peer's last few samples, so
    one delayed answer (a busy event loop, a queue) does not throw the coordinate off."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.coord = Coordinate()
        self._rng = rng or random.Random()
        self._recent: dict[bytes, list[float]] = {}

    def observe(self, peer: bytes, peer_coord: Coordinate, rtt_s: float) -> Coordinate:
        if not (0 < rtt_s < 10):
            return self.coord
        samples = self._recent.pop(peer, [])  # re-inserted last: the dict stays in LRU order
        samples = [*samples[-(SAMPLES_PER_PEER - 1):], rtt_s]
        self._recent[peer] = samples
        while len(self._recent) > MAX_PEERS:
            del self._recent[next(iter(self._recent))]
        self.coord = update(self.coord, peer_coord, min(samples), self._rng)
        return self.coord

    def pick(self, peers: list[bytes], k: int) -> list[bytes]:
        """Up to ``k`` peers to sample this round, at random (Vivaldi wants a varied set)."""
        return self._rng.sample(peers, min(k, len(peers)))


def moved(a: Coordinate, b: Coordinate) -> float:
    """How far apart two positions of the same node are, in seconds of predicted RTT."""
    return math.hypot(a.x - b.x, a.y - b.y) + abs(a.height - b.height)

"""Choosing relays (sans-IO): candidates from signed supernode records, ranked by estimated
caller→relay→callee latency, spare budget and recent failures.

The caller's leg is measured (probe RTTs the client already has) or, failing that, estimated
from Vivaldi coordinates; the callee's leg is estimated from the relay's coordinates and those
of the callee's supernode (a client attaches to its nearest supernode, so that is where it is),
so the callee's side needs no probing. A relay that just failed is avoided for a while.

For a file, the estimate and a small penalty for load make one score. For a call, latency
decides first (in steps of :data:`CALL_LATENCY_STEP_S`: closer estimates are within
Vivaldi's error), then spare budget: of relays equally near, the one with the most spare rate
goes first, so calls spread over relays before any fills up.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from overlay.core.records import SignedRecord, SupernodeRecord
from overlay.core.vivaldi import Coordinate, for_prediction

UNKNOWN_LEG_S = 0.15
FAILURE_PENALTY_S = 1.0
FAILURE_MEMORY_S = 300.0
LOAD_PENALTY_S = 0.05
TOP = 3
CALL_LATENCY_STEP_S = 0.01


@dataclass(frozen=True)
class RelayCandidate:
    node_key: bytes
    host: str
    port: int
    capacity_bps: int
    spare_bps: int
    coords: Coordinate | None

    @property
    def relay_id(self) -> str:
        return self.node_key.hex()[:16]


def candidates(found: list[SignedRecord], rate_bps: int, now: float | None = None
               ) -> list[RelayCandidate]:
    """Relays with a budget at all whose records do not say they are too full for
    ``rate_bps`` (0: any spare). Records lag behind load, so admission at the relay decides;
    spare capacity only ranks."""
    t = time.time() if now is None else now
    out = []
    for signed in found:
        r = signed.record
        if not isinstance(r, SupernodeRecord) or r.expires_at <= t:
            continue
        if r.relay_capacity_bps <= 0 or (rate_bps and r.relay_spare_bps < rate_bps):
            continue
        out.append(RelayCandidate(r.node_key, r.host, r.port, r.relay_capacity_bps,
                                  r.relay_spare_bps, for_prediction(r.coords)))
    return out


@dataclass
class RelayHistory:
    """Recent failures per relay key (kept by the caller's client)."""

    failures: dict[bytes, list[float]] = field(default_factory=dict)

    def failed(self, node_key: bytes, now: float | None = None) -> None:
        self.failures.setdefault(node_key, []).append(time.monotonic() if now is None else now)

    def recent(self, node_key: bytes, now: float | None = None) -> int:
        t = time.monotonic() if now is None else now
        kept = [f for f in self.failures.get(node_key, []) if t - f < FAILURE_MEMORY_S]
        if kept:
            self.failures[node_key] = kept
        else:
            self.failures.pop(node_key, None)
        return len(kept)


def estimated_latency(
    c: RelayCandidate, caller_rtt: dict[bytes, float], caller_coords: Coordinate | None,
    callee_coords: Coordinate | None, callee_supernode: bytes,
) -> float:
    if c.node_key in caller_rtt:
        caller_leg = caller_rtt[c.node_key]
    elif c.coords is not None and caller_coords is not None:
        caller_leg = c.coords.distance(caller_coords)
    else:
        caller_leg = UNKNOWN_LEG_S
    if c.node_key == callee_supernode:
        callee_leg = 0.0  # the callee chose it as its nearest
    elif c.coords is not None and callee_coords is not None:
        callee_leg = c.coords.distance(callee_coords)
    else:
        callee_leg = UNKNOWN_LEG_S
    return caller_leg + callee_leg


def rank(
    found: list[RelayCandidate], *, caller_rtt: dict[bytes, float],
    caller_coords: Coordinate | None, callee_coords: Coordinate | None,
    callee_supernode: bytes, history: RelayHistory, exclude: set[bytes] | None = None,
    now: float | None = None, call: bool = False,
) -> list[RelayCandidate]:
    """Best first: latency estimate plus a penalty for recent failures; then, for a file, a
    penalty for load, for a ``call`` the most spare budget among equally near relays."""
    def score(c: RelayCandidate) -> tuple[float, int, bytes]:
        latency = estimated_latency(c, caller_rtt, caller_coords, callee_coords,
                                    callee_supernode)
        latency += FAILURE_PENALTY_S * history.recent(c.node_key, now)
        if call:
            return float(int(latency // CALL_LATENCY_STEP_S)), -c.spare_bps, c.node_key
        load = 1.0 - c.spare_bps / max(1, c.capacity_bps)
        return latency + LOAD_PENALTY_S * load, 0, c.node_key

    return sorted((c for c in found if c.node_key not in (exclude or set())), key=score)


def session_token(secret: bytes, relay_key: bytes) -> bytes:
    """The token for one relay: only the two holders of ``secret`` (carried in the signed,
    end-to-end invite) can compute it, and it differs per relay."""
    return hashlib.blake2b(relay_key, key=secret, digest_size=32,
                           person=b"overlay-relay").digest()

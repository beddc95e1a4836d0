"""How a client chooses, keeps and replaces its supernode. Sans-IO: no sockets, no clock.

Everything here takes what the daemon observed (candidates, probe results, alternatives
named by ``Refused``/``Moving``, how long a session lasted) and returns a decision; the
daemon (:mod:`overlay.client.daemon`) does the I/O.

* :func:`rank` -- supernodes that answered a probe and have room, lowest RTT first.
* :func:`spread` -- the near ones (RTT close to the best) drawn by chance weighted by their
  spare capacity, so clients spread over near supernodes in proportion to capacity.
* :func:`choose_backup` -- the next-best supernode, preferably on another IP than the primary.
* :class:`Backoff` -- capped, jittered exponential delays between failed rounds.
* :class:`FailoverPlan` -- the order in which to try re-attaching: the warm backup, then the
  alternatives the old supernode named, then a rediscovery (directory + probes); every
  supernode at most once per plan, alternatives from a ``Refused(FULL)`` inserted next.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from overlay.attach.messages import Alternative
from overlay.core.records import SignedRecord, SupernodeRecord


@dataclass(frozen=True)
class Candidate:
    """A supernode we may attach to: its advertised address and its (pinned) node key."""

    host: str
    port: int
    node_key: bytes
    #: clients attached and capacity, from its signed record (0 when unknown)
    load: int = 0
    max_clients: int = 0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def full_by_record(self) -> bool:
        return self.max_clients > 0 and self.load >= self.max_clients

    @classmethod
    def from_record(cls, signed: SignedRecord) -> Candidate:
        rec = signed.record
        if not isinstance(rec, SupernodeRecord):
            raise TypeError("a candidate comes from a supernode record")
        return cls(rec.host, rec.port, rec.node_key, rec.load, rec.max_clients)


@dataclass(frozen=True)
class Measurement:
    """What one probe said. ``rtt_s`` is None when the supernode did not answer."""

    rtt_s: float | None
    accepting: bool = False
    load_permille: int = 0

    @property
    def answered(self) -> bool:
        return self.rtt_s is not None


def merge_candidates(*groups: Iterable[Candidate]) -> list[Candidate]:
    """One candidate per node key; a later group's entry replaces an earlier one's."""
    merged: dict[bytes, Candidate] = {}
    for group in groups:
        for cand in group:
            merged[cand.node_key] = cand
    return list(merged.values())


#: RTTs closer than this count as equal: then load decides (and chance, so that clients
#: that all measure the same RTT do not all pick the same supernode)
RTT_TOLERANCE_S = 0.002


def rank(
    candidates: Iterable[Candidate],
    measured: Mapping[bytes, Measurement],
    *,
    exclude: Iterable[bytes] = (),
    rtt_tolerance_s: float = RTT_TOLERANCE_S,
    rng: random.Random | None = None,
) -> list[Candidate]:
    """Supernodes that answered a probe and said they accept clients, lowest RTT first.

    RTTs in the same ``rtt_tolerance_s`` bucket tie; ties go to the lower announced load
    (probe, then signed record), then to chance with ``rng`` (by address without one).
    Supernodes that did not answer, said they are not accepting, or are in ``exclude`` are
    left out.
    """
    skip = set(exclude)
    usable: list[tuple[int, int, int, float | str, Candidate]] = []
    for cand in candidates:
        m = measured.get(cand.node_key)
        if cand.node_key in skip or m is None or m.rtt_s is None or not m.accepting:
            continue
        bucket = int(m.rtt_s / rtt_tolerance_s) if rtt_tolerance_s > 0 else 0
        tiebreak: float | str = rng.random() if rng is not None else cand.address
        usable.append((bucket, m.load_permille, cand.load, tiebreak, cand))
    usable.sort(key=lambda t: t[:4])
    return [t[4] for t in usable]


#: supernodes whose RTT is within NEAR_ABS_S + NEAR_REL x the best RTT count as near: a
#: client picks among them by spare capacity (:func:`spread`). Wider bands spread load more
#: but attach farther (tools/sim, 60 supernodes: 68 % of clients in their 10 % nearest with
#: 5 ms + 20 %)
NEAR_ABS_S = 0.002
NEAR_REL = 0.1


def spare_capacity(cand: Candidate, m: Measurement) -> float:
    """Clients ``cand`` can still take: its ``max_clients`` (record; 1 when unknown) times
    the free share its probe announced."""
    capacity = cand.max_clients if cand.max_clients > 0 else 1
    return capacity * max(0.0, 1.0 - m.load_permille / 1000)


def spread(
    ranked: Sequence[Candidate],
    measured: Mapping[bytes, Measurement],
    rng: random.Random,
    *,
    near_abs_s: float = NEAR_ABS_S,
    near_rel: float = NEAR_REL,
) -> list[Candidate]:
    """``ranked`` (:func:`rank`'s order) with its near band -- the candidates whose RTT is at
    most ``near_abs_s + near_rel`` x the best one's -- in a random order weighted by spare
    capacity (Efraimidis-Spirakis: each draw without replacement picks a candidate with
    probability proportional to its weight), the others after them in RTT order. Clients
    that measure the same supernodes then attach to each in proportion to its capacity, and
    keep their backups on different ones."""
    if not ranked:
        return []
    rtts = [measured[c.node_key].rtt_s for c in ranked]
    best = min(r for r in rtts if r is not None)
    limit = best * (1.0 + near_rel) + near_abs_s
    near = [(c, spare_capacity(c, measured[c.node_key])) for c, r in zip(ranked, rtts,
                                                                          strict=True)
            if r is not None and r <= limit]
    rest = [c for c, r in zip(ranked, rtts, strict=True) if r is None or r > limit]

    def draw_key(cw: tuple[Candidate, float]) -> float:
        weight = cw[1]
        return rng.random() ** (1.0 / weight) if weight > 0 else -1.0

    drawn = sorted(near, key=draw_key, reverse=True)
    return [c for c, _ in drawn] + rest


def choose_backup(ranked: Sequence[Candidate], primary: Candidate | None) -> Candidate | None:
    """The best-ranked supernode other than ``primary``, preferably on another host."""
    others = [
        c for c in ranked
        if primary is None
        or (c.node_key != primary.node_key and (c.host, c.port) != (primary.host, primary.port))
    ]
    if primary is not None:
        for cand in others:
            if cand.host != primary.host:
                return cand
    return others[0] if others else None


def resolve_alternatives(
    alternatives: Iterable[Alternative], known: Iterable[Candidate]
) -> list[Candidate]:
    """Alternatives we can attach to with a pinned key, in the order they were named.

    An alternative that names its node key is used as is; one without a key is matched by
    address against ``known`` supernodes (signed records, host cache) and dropped if unknown:
    a supernode session always pins the key.
    """
    by_address = {(c.host, c.port): c for c in known}
    by_key = {c.node_key: c for c in known}
    out: list[Candidate] = []
    seen: set[bytes] = set()
    for alt in alternatives:
        if alt.node_key:
            base = by_key.get(alt.node_key)
            if base is not None and (base.host, base.port) == (alt.host, alt.port):
                cand = base
            else:
                cand = Candidate(alt.host, alt.port, alt.node_key)
        else:
            found = by_address.get((alt.host, alt.port))
            if found is None:
                continue
            cand = found
        if cand.node_key not in seen:
            seen.add(cand.node_key)
            out.append(cand)
    return out


# --- backoff ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before retry ``n`` (from 0): ``min(cap, initial * multiplier**n)``, then jitter
    takes off up to ``jitter`` of it (so many clients that lost one supernode spread out).
    """

    initial_s: float = 0.5
    multiplier: float = 2.0
    cap_s: float = 30.0
    jitter: float = 0.5
    #: a session that lasted this long was healthy: the next failure starts from scratch
    stable_after_s: float = 30.0
    #: after losing a healthy attachment, wait a random [0, this) s before re-attaching: the
    #: clients of a supernode that went away do not all land on its neighbours at once
    failover_jitter_s: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.cap_s < self.initial_s:
            raise ValueError("backoff needs 0 < initial_s <= cap_s")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs multiplier >= 1 and 0 <= jitter < 1")
        if self.failover_jitter_s < 0:
            raise ValueError("failover jitter must not be negative")


@dataclass
class Backoff:
    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    #: sessions in a row that ended before ``stable_after_s``
    short_sessions: int = 0

    def peek_ceiling(self) -> float:
        """The un-jittered delay the next :meth:`next_delay` is drawn below."""
        p = self.policy
        # cap the exponent too, so a long outage cannot overflow the float
        exponent = min(self.attempt, 64)
        return float(min(p.cap_s, p.initial_s * p.multiplier**exponent))

    def next_delay(self) -> float:
        ceiling = self.peek_ceiling()
        self.attempt += 1
        return ceiling * (1.0 - self.policy.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0
        self.short_sessions = 0

    def session_ended(self, lasted_s: float) -> float:
        """A session that was attached for ``lasted_s`` ended: how long to wait first.

        A stable session resets the schedule and the failover starts after a random
        ``failover_jitter_s`` at most (the clients of one supernode stagger). So does the
        first short one; each further session that dies quickly (a supernode that accepts
        and drops us) makes us back off, so flapping cannot make the client spin.
        """
        stagger = self.policy.failover_jitter_s * self.rng.random()
        if lasted_s >= self.policy.stable_after_s:
            self.reset()
            return stagger
        self.short_sessions += 1
        if self.short_sessions == 1:
            return stagger
        return self.next_delay()


# --- failover -----------------------------------------------------------------------------


class EndReason(Enum):
    """Why an attachment ended (or never started)."""

    LOST = "lost"  # the connection dropped or the supernode stopped answering
    MOVING = "moving"  # the supernode told us to move
    REFUSED = "refused"  # it refused an attach or a refresh
    STOPPING = "stopping"  # we are shutting down
    NEARER = "nearer"  # a late refine attached us to a nearer supernode (make-before-break)


class Source(Enum):
    BACKUP = "backup"
    ALTERNATIVE = "alternative"
    DISCOVERY = "discovery"
    LATE_REFINE = "late_refine"


@dataclass(frozen=True)
class TryCandidate:
    candidate: Candidate
    source: Source


@dataclass(frozen=True)
class Rediscover:
    """Fetch the directory, probe, and feed :meth:`FailoverPlan.discovered` the ranking."""


Step = TryCandidate | Rediscover


class FailoverPlan:
    """The order in which to try re-attaching after losing (or never having) a supernode.

    Backup first (it is known to be alive: we hold a session with it), then the
    alternatives the old supernode named, then one rediscovery whose ranking is tried in
    order. A refusal's alternatives go to the front. No supernode is tried twice in one
    plan, and ``exclude`` (the one we just lost) is never tried. When :meth:`next` returns
    None the round failed: back off and start a new plan.
    """

    def __init__(
        self,
        *,
        backup: Candidate | None = None,
        alternatives: Sequence[Candidate] = (),
        exclude: Iterable[bytes] = (),
        rediscover: bool = True,
        max_discovered: int = 8,
    ) -> None:
        self._tried: set[bytes] = set(exclude)
        self._queue: list[Step] = []
        self._rediscover_pending = rediscover
        self._rediscovered = False
        self.max_discovered = max_discovered
        if backup is not None:
            self._queue.append(TryCandidate(backup, Source.BACKUP))
        self._queue.extend(TryCandidate(c, Source.ALTERNATIVE) for c in alternatives)

    @property
    def tried(self) -> frozenset[bytes]:
        return frozenset(self._tried)

    def next(self) -> Step | None:
        while self._queue:
            step = self._queue.pop(0)
            if isinstance(step, TryCandidate):
                if step.candidate.node_key in self._tried:
                    continue
                self._tried.add(step.candidate.node_key)
            return step
        if self._rediscover_pending:
            self._rediscover_pending = False
            self._rediscovered = True
            return Rediscover()
        return None

    def refused(self, alternatives: Sequence[Candidate]) -> None:
        """The candidate just tried refused us (e.g. FULL) and named these: try them next."""
        fresh = [
            TryCandidate(c, Source.ALTERNATIVE) for c in alternatives
            if c.node_key not in self._tried
        ]
        self._queue[:0] = fresh

    def discovered(self, ranked: Sequence[Candidate]) -> None:
        """The ranking from a rediscovery: try the best few not tried yet, in order."""
        fresh = [c for c in ranked if c.node_key not in self._tried][: self.max_discovered]
        self._queue.extend(TryCandidate(c, Source.DISCOVERY) for c in fresh)

"""How path races turn out, per pair of NAT classes and per kind of attempt (sans-IO).

The media service feeds :meth:`ConnectStats.record` one race at a time: our NAT class and the
peer's (``Candidates.nat``: public, cone, symmetric, no-udp, unknown), the race's timeline
events (``(seconds since the race began, "NAME: start" | "NAME: authenticated" |
"selected NAME" | ...)``, as :class:`overlay.media.connect.Timeline` logs them) and the
time the race began relative to the start of the whole setup. Per pair and per kind (the
attempt's name without its index: ``tcp-dial``, ``tcp-dial-mapped``, ``tcp-accept``,
``udp-punch``, ``relay``; the attempts of ``none`` count races nothing won) it counts
attempts started, wins and the winner's time to connect: from the start of setup (lookup,
invite, answer) to the race's ``selected`` event. A transfer that moved from the selected relay
to a direct path that completed later (:meth:`ConnectStats.record_upgrade`) counts one
``upgrades`` for that path's kind, and the attempts that started after the selection. The
client's ``status`` shows
:meth:`ConnectStats.to_json` as ``connectivity``; ``tools/bench/connect.py`` reports it.
"""

from __future__ import annotations

import re
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

#: time-to-connect samples kept per (pair, kind), for the median
SAMPLES = 64
#: (pair, kind) entries kept at most (NAT classes are a short list; this bounds hostile ones)
MAX_ENTRIES = 256
NO_WINNER = "none"
_INDEX = re.compile(r"-\d+\Z")


def attempt_kind(name: str) -> str:
    """``relay-1`` -> ``relay``, ``tcp-dial-mapped-0`` -> ``tcp-dial-mapped``."""
    return _INDEX.sub("", name)


def pair_key(local_nat: str, remote_nat: str) -> str:
    return f"{local_nat[:16]}/{remote_nat[:16]}"


@dataclass
class KindCounts:
    attempts: int = 0
    wins: int = 0
    #: moves to this kind's path after a relay won the race
    upgrades: int = 0
    connect_s: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"attempts": self.attempts, "wins": self.wins}
        if self.upgrades:
            out["upgrades"] = self.upgrades
        if self.connect_s:
            out["connect_s_p50"] = round(statistics.median(self.connect_s), 4)
            out["connect_s_last"] = round(self.connect_s[-1], 4)
        return out


@dataclass(frozen=True)
class RaceOutcome:
    """One race as :meth:`ConnectStats.record` reads it."""

    started: tuple[str, ...]
    winner: str | None
    #: seconds from the race's start to its ``selected`` event
    selected_at: float | None


def outcome_of(events: Iterable[tuple[float, str]]) -> RaceOutcome:
    """The attempts started, the winner and when it was selected, from timeline events."""
    started: list[str] = []
    winner: str | None = None
    selected_at: float | None = None
    for at, event in events:
        if event.endswith(": start"):
            started.append(event[: -len(": start")])
        elif event.startswith("selected "):
            winner, selected_at = event[len("selected "):], at
    return RaceOutcome(tuple(dict.fromkeys(started)), winner, selected_at)


class ConnectStats:
    """Attempts, wins and time to connect per (our NAT class, the peer's) and attempt kind."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], KindCounts] = {}
        self.races = 0

    def _entry(self, pair: str, kind: str) -> KindCounts | None:
        key = (pair, kind)
        if key not in self.counts and len(self.counts) >= MAX_ENTRIES:
            return None
        return self.counts.setdefault(key, KindCounts())

    def record(self, local_nat: str, remote_nat: str, events: Iterable[tuple[float, str]],
               setup_s: float = 0.0) -> RaceOutcome:
        """Count one race; ``setup_s`` is how long setup ran before the race began."""
        outcome = outcome_of(events)
        pair = pair_key(local_nat, remote_nat)
        self.races += 1
        for kind in dict.fromkeys(attempt_kind(n) for n in outcome.started):
            entry = self._entry(pair, kind)
            if entry is not None:
                entry.attempts += 1
        if outcome.winner is None:  # a race nothing won: one more attempt of "none"
            entry = self._entry(pair, NO_WINNER)
            if entry is not None:
                entry.attempts += 1
            return outcome
        entry = self._entry(pair, attempt_kind(outcome.winner))
        if entry is not None:
            entry.wins += 1
            if outcome.selected_at is not None:
                entry.connect_s.append(max(0.0, setup_s + outcome.selected_at))
        return outcome

    def record_upgrade(self, local_nat: str, remote_nat: str,
                       events: Iterable[tuple[float, str]]) -> str | None:
        """Count a move after the race (its whole timeline, ``upgrade: NAME`` in it): the
        attempts that started after the selection, and an upgrade to ``NAME``'s kind."""
        pair = pair_key(local_nat, remote_nat)
        selected, moved_to, late = False, None, []
        for _, event in events:
            if event.startswith("selected "):
                selected = True
            elif selected and event.endswith(": start"):
                late.append(event[: -len(": start")])
            elif selected and event.startswith("upgrade: "):
                moved_to = event[len("upgrade: "):]
        if moved_to is None:
            return None
        for kind in dict.fromkeys(attempt_kind(n) for n in late):
            entry = self._entry(pair, kind)
            if entry is not None:
                entry.attempts += 1
        entry = self._entry(pair, attempt_kind(moved_to))
        if entry is not None:
            entry.upgrades += 1
        return moved_to

    def to_json(self) -> dict[str, object]:
        """``{"races": N, "pairs": {"cone/symmetric": {"relay": {"attempts", "wins",
        "connect_s_p50", "connect_s_last"[, "upgrades"]}, ...}}}`` (no times for kinds that never
        won)."""
        pairs: dict[str, dict[str, object]] = {}
        for (pair, kind), counts in sorted(self.counts.items()):
            pairs.setdefault(pair, {})[kind] = counts.to_json()
        return {"races": self.races, "pairs": pairs}

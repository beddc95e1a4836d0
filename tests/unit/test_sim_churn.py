"""tools/sim's churn models: Skype's 5.5 h supernode sessions with 40 % single-session
supernodes, harsh = four times faster, seeded."""

from __future__ import annotations

import itertools
import random
import statistics

from tools.sim.churn import HARSH, HOUR, NONE, SKYPE, ChurnModel

DAY = 24 * HOUR


def first_sessions(model: ChurnModel, n: int = 4000) -> list[list[tuple[float, float]]]:
    """Each of ``n`` supernodes' sessions over 30 days."""
    rng = random.Random(1)
    return [model.supernode_sessions(0.0, 30 * DAY, rng) for _ in range(n)]


def test_skype_supernode_sessions_have_a_median_of_five_and_a_half_hours() -> None:
    runs = first_sessions(SKYPE)
    median = statistics.median(stop - start for sessions in runs for start, stop in sessions)
    assert 5.0 * HOUR < median < 6.0 * HOUR
    single = sum(1 for sessions in runs if len(sessions) == 1) / len(runs)
    assert 0.37 < single < 0.43  # 40 % never come back (a returning one has more in 30 days)
    for sessions in runs:
        for (_, stop), (start, _) in itertools.pairwise(sessions):
            assert start > stop  # an offline period between sessions


def test_harsh_is_four_times_faster_and_has_a_mass_failure() -> None:
    median = statistics.median(stop - start for sessions in first_sessions(HARSH)
                               for start, stop in sessions)
    assert 5.0 * HOUR / 4 < median < 6.0 * HOUR / 4
    assert HARSH.mass_failure == (0.5, 0.10)


def test_users_churn_and_none_keeps_everyone_up_and_the_seed_fixes_it() -> None:
    def users(seed: int) -> list[list[tuple[float, float]]]:
        rng = random.Random(seed)
        return [SKYPE.user_sessions(0.0, DAY, rng) for _ in range(500)]

    assert users(1) == users(1) != users(2)
    median = statistics.median(b - a for s in users(1) for a, b in s if b < DAY)
    assert 0.8 * HOUR < median < 1.25 * HOUR
    assert NONE.supernode_sessions(10.0, DAY, random.Random(1)) == [(10.0, DAY)]
    assert NONE.user_sessions(0.0, DAY, random.Random(1)) == [(0.0, DAY)]

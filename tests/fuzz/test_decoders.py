"""The short CI pass of every fuzz target (tests/fuzz/targets.py): a few hundred
deterministic cases per decoder. ``python -m tools.fuzz`` runs 100k+ of the same."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.targets import REGRESSIONS, TARGETS

CI_EXAMPLES = 300


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_decoder_raises_only_its_typed_error(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=CI_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def run(case: Any) -> None:
        target.check(case)

    run()


@pytest.mark.parametrize(
    ("name", "case"), [(n, c) for n, cases in sorted(REGRESSIONS.items()) for c in cases])
def test_regression_example(name: str, case: Any) -> None:
    TARGETS[name].check(case)

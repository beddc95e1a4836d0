"""E-model figures against published reference values (ITU-T G.107, G.113)."""

from __future__ import annotations

import pytest

from overlay.call.quality import (
    G711_PLC,
    CodecModel,
    LossPattern,
    burst_ratio,
    delay_impairment,
    effective_equipment_impairment,
    mos,
    mos_from_r,
    r_factor,
)


@pytest.mark.parametrize(("r", "expected"), [
    # G.107 default connection: R = 93.2, MOS 4.41 (Annex B / Table B.1 relations)
    (93.2, 4.41), (90.0, 4.34), (80.0, 4.02), (70.0, 3.60), (60.0, 3.10), (50.0, 2.58),
    (0.0, 1.0), (-5.0, 1.0), (100.0, 4.5),
])
def test_mos_from_r_matches_g107(r: float, expected: float) -> None:
    assert mos_from_r(r) == pytest.approx(expected, abs=0.006)


def test_no_delay_no_loss_is_the_g107_default() -> None:
    assert r_factor(0.0, 0.0) == pytest.approx(93.2)
    assert mos(0.0, 0.0) == pytest.approx(4.41, abs=0.005)


@pytest.mark.parametrize(("d", "expected"), [
    (0.0, 0.0), (100.0, 2.4), (150.0, 3.6), (177.3, 4.2552), (200.0, 4.8 + 0.11 * 22.7),
    (400.0, 9.6 + 0.11 * 222.7),
])
def test_delay_impairment(d: float, expected: float) -> None:
    assert delay_impairment(d) == pytest.approx(expected)


def test_effective_equipment_impairment_g711_plc() -> None:
    # G.113 App. I: G.711 with PLC, Bpl 25.1; 2 % random loss -> 95 * 2 / 27.1
    assert effective_equipment_impairment(2.0) == pytest.approx(7.011, abs=0.001)
    assert effective_equipment_impairment(0.0) == 0.0
    # bursty loss hurts more than random loss at the same rate
    assert effective_equipment_impairment(2.0, burst_r=3.0) > 7.011
    g729a = CodecModel("G.729A+VAD", 11.0, 19.0)  # G.113 App. I values
    assert effective_equipment_impairment(0.0, g729a) == 11.0


def test_the_issue_targets() -> None:
    """Issue 15's lab targets, for a jitter-buffer delay of 40 ms and this codec model:
    40 ms one way with 1 % loss per link, direct (one link) and relayed (two links)."""
    codec_and_buffer = 25.0 + 40.0
    direct = mos(40.0 + codec_and_buffer, 1.0)
    relayed = mos(80.0 + codec_and_buffer, 1.99)
    assert direct == pytest.approx(4.26, abs=0.01) and direct >= 4.0
    assert relayed == pytest.approx(4.12, abs=0.01) and relayed >= 3.8
    assert mos(1.0 + 25.0 + 20.0, 0.0) >= 4.3


def test_burst_ratio() -> None:
    random_like = LossPattern()
    for i in range(1000):
        random_like.add(i % 50 == 0)
    assert burst_ratio(random_like) == pytest.approx(1.0, abs=0.03)
    bursty = LossPattern()
    for i in range(1000):
        bursty.add(i % 100 < 5)  # 5 % loss in runs of 5
    assert burst_ratio(bursty) == pytest.approx(1 / (1 / 95 + 1 / 5), rel=0.05)
    assert burst_ratio(LossPattern()) == 1.0
    assert G711_PLC.bpl == 25.1

"""Call quality, sans-IO: the E-model (ITU-T G.107) rating R and its MOS estimate, from
mouth-to-ear delay and packet loss, for a stated codec model.

    R = R0 - Is - Id - Ie_eff (+ A = 0),  with R0 - Is = 93.2 (G.107 default values)

- **Delay impairment** ``Id`` (echo-free, the simplification of Cole & Rosenbluth, "Voice
  over IP performance monitoring", ACM SIGCOMM CCR 31(2), 2001, widely used for G.107)::

      Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)     (d: one-way mouth-to-ear, ms)

- **Effective equipment impairment** (G.107 section 3.6)::

      Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)     (Ppl in %)

  ``BurstR`` is 1 for random loss and ``1 / (p + q)`` for loss following a two-state Markov
  model (p: P(loss | last received), q: P(received | last lost)), see :func:`burst_ratio`.
- **MOS** (G.107 Annex B)::

      MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6   for 0 < R < 100 (1 below, 4.5 above)

**Codec model** (:data:`G711_PLC`): G.711 with packet loss concealment, ``Ie = 0`` and
``Bpl = 25.1`` (ITU-T G.113 Appendix I, Table I.3), 20 ms frames. The synthetic call payload
carries no audio, so its bitrate does not enter R; a call's mouth-to-ear delay is its network
one-way delay plus the jitter buffer's delay plus :data:`CODEC_DELAY_MS` (one 20 ms frame of
packetization and 5 ms of look-ahead/processing).
"""

from __future__ import annotations

from dataclasses import dataclass

R_DEFAULT = 93.2
CODEC_DELAY_MS = 25.0


@dataclass(frozen=True)
class CodecModel:
    name: str
    #: equipment impairment factor with no loss
    ie: float
    #: packet-loss robustness factor
    bpl: float


G711_PLC = CodecModel("G.711 with PLC (G.113 App. I: Ie 0, Bpl 25.1)", 0.0, 25.1)


def delay_impairment(one_way_ms: float) -> float:
    d = max(0.0, one_way_ms)
    return 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)


def effective_equipment_impairment(loss_pct: float, codec: CodecModel = G711_PLC,
                                   burst_r: float = 1.0) -> float:
    ppl = min(100.0, max(0.0, loss_pct))
    if ppl == 0.0:
        return codec.ie
    return codec.ie + (95.0 - codec.ie) * ppl / (ppl / max(1.0, burst_r) + codec.bpl)


def r_factor(one_way_ms: float, loss_pct: float, codec: CodecModel = G711_PLC,
             burst_r: float = 1.0) -> float:
    return (R_DEFAULT - delay_impairment(one_way_ms)
            - effective_equipment_impairment(loss_pct, codec, burst_r))


def mos_from_r(r: float) -> float:
    if r <= 0.0:
        return 1.0
    if r >= 100.0:
        return 4.5
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def mos(one_way_ms: float, loss_pct: float, codec: CodecModel = G711_PLC,
        burst_r: float = 1.0) -> float:
    """The MOS estimate for a mouth-to-ear delay and a loss after the jitter buffer."""
    return mos_from_r(r_factor(one_way_ms, loss_pct, codec, burst_r))


@dataclass
class LossPattern:
    """Transitions between received and lost slots, for :func:`burst_ratio`."""

    received_to_lost: int = 0
    received_to_received: int = 0
    lost_to_received: int = 0
    lost_to_lost: int = 0
    _last_lost: bool | None = None

    def add(self, lost: bool) -> None:
        last = self._last_lost
        if last is not None:
            if last:
                self.lost_to_lost += lost
                self.lost_to_received += not lost
            else:
                self.received_to_lost += lost
                self.received_to_received += not lost
        self._last_lost = lost


def burst_ratio(pattern: LossPattern) -> float:
    """G.107 BurstR = 1 / (p + q) of a two-state Markov loss model (1 for random loss, and
    when there is too little loss to tell)."""
    from_received = pattern.received_to_lost + pattern.received_to_received
    from_lost = pattern.lost_to_received + pattern.lost_to_lost
    if not from_received or not from_lost:
        return 1.0
    p = pattern.received_to_lost / from_received
    q = pattern.lost_to_received / from_lost
    return max(1.0, 1.0 / (p + q)) if p + q > 0 else 1.0

"""The congestion controller of media QUIC paths: :class:`MediaCongestionControl`, BBR-like,
registered with aioquic as ``"overlay-bbr"`` (:data:`CONGESTION_CONTROL`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket

CONGESTION_CONTROL = "overlay-bbr"


class MediaCongestionControl(QuicCongestionControl):
    """A BBR-like congestion controller for media paths (registered as ``"overlay-bbr"``).

    Loss-based controllers (Reno, CUBIC) read every lost packet as congestion: on a path with
    a few percent of random loss and a long RTT (Wi-Fi, mobile, far peers) they keep the window
    at a handful of packets; 1 MiB over 400 ms RTT and 4 % loss took 30 s with CUBIC. This one
    follows BBR v1 in a simplified form. It measures the delivery rate (the maximum over the
    last 10 round trips) and the minimum RTT, and keeps ``2 x rate x min_rtt`` in flight;
    aioquic's pacer spreads the packets over the smoothed RTT.

    - Startup: the window is ``2.89 x rate x min_rtt`` (at least the initial window), so it
      grows by up to 2.89x per round trip while the measured rate grows; it ends when the rate
      grew by less than 25 % for three rounds, or on heavy loss.
    - Steady: ``2 x rate x min_rtt``. Sending up to twice the measured rate when the queue is
      empty keeps probing for more bandwidth.
    - Probe RTT: when the minimum RTT was not seen again for 10 s, the window drops to 4
      packets for ``max(200 ms, min_rtt)`` so the queue drains and the minimum is measured
      afresh (our own queue never inflates it).
    - Loss is not a congestion signal unless heavy: more than ``HEAVY_LOSS`` of a round trip's
      packets cuts the window by 30 % and restarts the rate estimate. Persistent congestion
      (RFC 9002) restarts from 4 packets in startup.
    """

    STARTUP_GAIN = 2.89
    CWND_GAIN = 2.0
    STARTUP_GROWTH = 1.25
    STARTUP_ROUNDS = 3
    BW_WINDOW_ROUNDS = 10
    MIN_RTT_WINDOW_S = 10.0
    PROBE_RTT_S = 0.2
    HEAVY_LOSS = 0.2
    #: never aim below this many packets in flight outside probe RTT: on LANs and loopback
    #: the minimum RTT is far below the RTT under load (scheduling, batched acks), and a
    #: window sized from it would starve itself
    MIN_WINDOW_PACKETS = 16
    PROBE_RTT_PACKETS = 4

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.mss = max_datagram_size
        self.mode = "startup"
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self._sent: dict[int, tuple[int, float, float]] = {}
        self.round = 0
        self._next_round_delivered = 0
        self._bw: deque[tuple[int, float]] = deque()  # (round, bytes/s), decreasing rates
        self.min_rtt: float | None = None
        self._min_rtt_at = 0.0
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self._round_lost = 0
        self._round_acked = 0
        self._probe_done_at: float | None = None
        self._probe_min = float("inf")
        self._probe_from = "startup"

    @property
    def bandwidth(self) -> float:
        return self._bw[0][1] if self._bw else 0.0

    def _packets(self, n: int) -> int:
        return n * self.mss

    # -- events from aioquic's recovery ------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        now = packet.sent_time or 0.0
        if self.bytes_in_flight == 0:
            self.first_sent_time = self.delivered_time = now
        self.bytes_in_flight += packet.sent_bytes
        if len(self._sent) > 200_000:  # never: every in-flight packet is acked or lost
            self._sent.clear()
        self._sent[id(packet)] = (self.delivered, self.delivered_time, self.first_sent_time)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self.delivered += packet.sent_bytes
        self.delivered_time = now
        self._round_acked += packet.sent_bytes
        state = self._sent.pop(id(packet), None)
        if state is not None:
            delivered_then, delivered_time_then, first_sent_then = state
            sent = packet.sent_time or now
            self.first_sent_time = sent
            if delivered_then >= self._next_round_delivered:
                self._next_round_delivered = self.delivered
                self._end_round()
            interval = max(sent - first_sent_then, now - delivered_time_then)
            if interval > 0:
                self._add_bw_sample((self.delivered - delivered_then) / interval)
        self._update(now, packet.sent_bytes)

    def _forget(self, packets: Iterable[QuicSentPacket]) -> int:
        gone = 0
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(id(packet), None)
            gone += packet.sent_bytes
        return gone

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        self._forget(packets)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        self._round_lost += self._forget(packets)

    def on_persistent_congestion(self) -> None:
        self.congestion_window = self._packets(self.PROBE_RTT_PACKETS)
        self._bw.clear()
        self.mode = "startup"
        self._full_bw = 0.0
        self._full_bw_rounds = 0

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if self.min_rtt is None or rtt <= self.min_rtt:
            self.min_rtt = rtt
            self._min_rtt_at = now
        self._probe_min = min(self._probe_min, rtt)

    # -- the model ---------------------------------------------------------------------------

    def _add_bw_sample(self, rate: float) -> None:
        while self._bw and self._bw[-1][1] <= rate:
            self._bw.pop()
        self._bw.append((self.round, rate))
        while self._bw[0][0] < self.round - self.BW_WINDOW_ROUNDS:
            self._bw.popleft()

    def _end_round(self) -> None:
        self.round += 1
        total = self._round_lost + self._round_acked
        heavy = total > 0 and self._round_lost > self.HEAVY_LOSS * total
        self._round_lost = self._round_acked = 0
        if heavy:
            self.congestion_window = max(int(self.congestion_window * 0.7),
                                         self._packets(self.PROBE_RTT_PACKETS))
            self._bw.clear()
            if self.mode == "startup":
                self._leave_startup()
            return
        if self.mode == "startup":
            if self.bandwidth >= self._full_bw * self.STARTUP_GROWTH:
                self._full_bw = self.bandwidth
                self._full_bw_rounds = 0
            else:
                self._full_bw_rounds += 1
                if self._full_bw_rounds >= self.STARTUP_ROUNDS:
                    self._leave_startup()

    def _leave_startup(self) -> None:
        self.mode = "steady"
        self.ssthresh = self.congestion_window

    def _update(self, now: float, acked: int) -> None:
        """Set the window after an acknowledgement."""
        if self.mode != "probe_rtt" and self.min_rtt is not None \
                and now - self._min_rtt_at > self.MIN_RTT_WINDOW_S:
            self._probe_from, self.mode = self.mode, "probe_rtt"
            self._probe_done_at = None
            self._probe_min = float("inf")
        if self.mode == "probe_rtt":
            self.congestion_window = self._packets(self.PROBE_RTT_PACKETS)
            if self._probe_done_at is None:
                if self.bytes_in_flight <= self.congestion_window:
                    self._probe_done_at = now + max(self.PROBE_RTT_S, self.min_rtt or 0.0)
            elif now >= self._probe_done_at:
                if self._probe_min < float("inf"):
                    self.min_rtt = self._probe_min
                self._min_rtt_at = now
                self.mode = self._probe_from
            else:
                return
            if self.mode == "probe_rtt":
                return
        if self.min_rtt is None or not self._bw:
            if self.mode == "startup":
                self.congestion_window += acked  # no model yet: plain slow start
            return
        bdp = self.bandwidth * self.min_rtt
        floor = self._packets(self.MIN_WINDOW_PACKETS)
        if self.mode == "startup":
            self.congestion_window = max(self.congestion_window,
                                         int(self.STARTUP_GAIN * bdp), floor)
        else:
            self.congestion_window = max(int(self.CWND_GAIN * bdp), floor)

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(mode=self.mode, bandwidth=int(self.bandwidth), min_rtt=self.min_rtt)
        return data


register_congestion_control(CONGESTION_CONTROL, MediaCongestionControl)

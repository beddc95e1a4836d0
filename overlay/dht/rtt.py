"""Round-trip time estimates per DHT contact (sans-IO)."""

from __future__ import annotations


class RttEstimator:
    """Jacobson/Karels smoothed RTT per contact, with a network-wide fallback."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.per_node: dict[bytes, tuple[float, float]] = {}
        self.overall: tuple[float, float] | None = None

    def observe(self, node_id: bytes, rtt: float) -> None:
        self.per_node[node_id] = self._update(self.per_node.get(node_id), rtt)
        self.overall = self._update(self.overall, rtt)

    @staticmethod
    def _update(prev: tuple[float, float] | None, rtt: float) -> tuple[float, float]:
        if prev is None:
            return rtt, rtt / 2
        srtt, var = prev
        var = 0.75 * var + 0.25 * abs(srtt - rtt)
        return 0.875 * srtt + 0.125 * rtt, var

    def timeout(self, node_id: bytes | None) -> float:
        est = self.per_node.get(node_id) if node_id else None
        if est is None:
            est = self.overall
            if est is None:
                return self.maximum
        srtt, var = est
        return max(self.minimum, min(self.maximum, srtt + 4 * var))

    def expected(self) -> float:
        """How long a round trip takes at most in the network as seen so far (the RTO
        without its minimum): a request unanswered past this is probably lost."""
        if self.overall is None:
            return self.maximum
        srtt, var = self.overall
        return min(self.maximum, srtt + 4 * var)

    def forget(self, node_id: bytes) -> None:
        self.per_node.pop(node_id, None)

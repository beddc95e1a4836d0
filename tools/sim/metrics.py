"""The simulator's output document: exactly the keys issue 14 names, from one run's results.

Keys (``None`` -> JSON null: not measured by this version of the simulator, see
tools/sim/README.md):

* ``lookup_success``: share of lookups that returned the looked-up user's presence record;
* ``lookup_p50_s``, ``lookup_p99_s``: virtual seconds per lookup (successful ones), nearest-rank
  percentiles; ``lookup_hops_p50``: median hops of the successful lookups
  (:class:`tools.sim.dhtsim.HopTrace`);
* ``attach_s_p50``, ``relist_s_p99``: client attach time and re-listing time after a
  supernode loss (None until client daemons run in the simulator);
* ``dht_msgs_per_node_s``, ``dht_bytes_per_node_s``: datagrams and bytes (IP/UDP headers
  included) one supernode sent per second during the measurement window, mean over
  supernodes, and ``_max``: the busiest supernode's;
* ``max_records_per_key``: the most records any node stored under one DHT key at the end;
* ``client_share_max_over_mean``: the most clients one supernode serves over the mean (None
  until the attach policy runs in the simulator);
* ``wall_s``, ``peak_rss_mib``: what the run cost in real time and memory;
* ``params``: every input (and the derived settings the run used).
"""

from __future__ import annotations

import math
import resource
from collections.abc import Sequence
from typing import Any

OUTPUT_KEYS: tuple[str, ...] = (
    "lookup_success", "lookup_p50_s", "lookup_p99_s", "lookup_hops_p50",
    "attach_s_p50", "relist_s_p99",
    "dht_msgs_per_node_s", "dht_msgs_per_node_s_max",
    "dht_bytes_per_node_s", "dht_bytes_per_node_s_max",
    "max_records_per_key", "client_share_max_over_mean",
    "wall_s", "peak_rss_mib", "params",
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def peak_rss_mib() -> float:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def document(values: dict[str, Any]) -> dict[str, Any]:
    """The output document: every key of :data:`OUTPUT_KEYS`, in that order (missing -> null).
    A key outside the list is a programming error."""
    unknown = set(values) - set(OUTPUT_KEYS)
    if unknown:
        raise KeyError(f"not an output key: {sorted(unknown)}")
    return {key: values.get(key) for key in OUTPUT_KEYS}

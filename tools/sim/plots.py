"""``--plots DIR``: one run's distributions as PNGs (matplotlib, Agg backend), for people who
would rather look than read:

* ``lookup_latency_cdf.png``: the CDF of successful lookups' simulated seconds;
* ``load_per_node.png``: DHT datagrams/s and kB/s sent by each supernode over the seconds it
  was up in the measurement window, busiest first;
* ``records_per_key.png``: how many records each key held at the end (every live node's
  storage), a histogram on a log scale;
* ``failover.png``: the CDF of ``relist_s`` (a crashed supernode's clients, crash to attached
  elsewhere; ``--users-as daemons``), or a note that no supernode failed.

Each title carries the run's parameters. :func:`series` takes the raw figures from the
simulator; :func:`write` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.sim.daemonsim import DaemonSim
from tools.sim.dhtsim import DhtSim

#: supernodes up less than this in the window are left out of the load plot (rates from a
#: few seconds are noise), as from ``dht_*_per_node_s_max``
MIN_UP_S = 60.0


@dataclass
class Series:
    lookup_s: list[float] = field(default_factory=list)
    msgs_per_node_s: list[float] = field(default_factory=list)
    kbytes_per_node_s: list[float] = field(default_factory=list)
    records_per_key: list[int] = field(default_factory=list)
    relist_s: list[float] | None = None


def series(sim: DhtSim) -> Series:
    """The raw figures behind the output document's aggregates."""
    out = Series(lookup_s=sorted(lk.seconds for lk in sim.lookups if lk.ok))
    rates = []
    for sn in sim.nodes:
        if sn.window_up_s < MIN_UP_S:
            continue
        d0, b0 = sim.window_counts.get(sn.index, (sn.host.sent_datagrams, sn.host.sent_bytes))
        rates.append(((sn.host.sent_datagrams - d0) / sn.window_up_s,
                      (sn.host.sent_bytes - b0) / sn.window_up_s / 1000))
    rates.sort(reverse=True)
    out.msgs_per_node_s = [m for m, _ in rates]
    out.kbytes_per_node_s = [b for _, b in rates]
    out.records_per_key = [len(slots) for sn in sim.nodes if sn.dht is not None and sn.host.up
                           for slots in sn.dht.storage.data.values()]
    if isinstance(sim, DaemonSim):
        out.relist_s = sorted(sim.relist_s)
    return out


def write(data: Series, directory: Path, title: str) -> list[Path]:
    """Draw the four plots into ``directory`` (created); the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    def cdf(ax: Any, values: list[float], label: str) -> None:
        n = len(values)
        ax.step(values, [(i + 1) / n for i in range(n)], where="post")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction")
        ax.grid(True, alpha=0.3)

    fig, ax = plt.subplots(figsize=(7, 4))
    if data.lookup_s:
        cdf(ax, data.lookup_s, "lookup latency (simulated s)")
    else:
        ax.text(0.5, 0.5, "no successful lookup", ha="center", transform=ax.transAxes)
    ax.set_title(f"lookup latency CDF ({len(data.lookup_s)} lookups)\n{title}", fontsize=9)
    save(fig, "lookup_latency_cdf.png")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ranks = range(1, len(data.msgs_per_node_s) + 1)
    top.bar(ranks, data.msgs_per_node_s, width=1.0)
    top.set_ylabel("datagrams/s")
    bottom.bar(ranks, data.kbytes_per_node_s, width=1.0)
    bottom.set_ylabel("kB/s")
    bottom.set_xlabel("supernode, busiest first")
    top.set_title(f"DHT traffic sent per supernode\n{title}", fontsize=9)
    save(fig, "load_per_node.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    if data.records_per_key:
        top_count = max(data.records_per_key)
        ax.hist(data.records_per_key, bins=range(1, top_count + 2), log=True)
    ax.set_xlabel("records under one key")
    ax.set_ylabel("keys (all live nodes' storage)")
    ax.set_title(f"records per key (max {max(data.records_per_key, default=0)})\n{title}",
                 fontsize=9)
    save(fig, "records_per_key.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    if data.relist_s:
        cdf(ax, data.relist_s, "crash -> attached elsewhere (simulated s)")
        what = f"{len(data.relist_s)} clients of crashed supernodes"
    else:
        why = "no supernode failed" if data.relist_s is not None else "--users-as records"
        ax.text(0.5, 0.5, f"nothing to show: {why}", ha="center", transform=ax.transAxes)
        what = why
    ax.set_title(f"failover time ({what})\n{title}", fontsize=9)
    save(fig, "failover.png")
    return written

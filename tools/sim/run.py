"""One simulator run: parameters in, the output document (:mod:`tools.sim.metrics`) out."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.core import logs
from overlay.dht import DHTConfig
from tools.sim import metrics, plots
from tools.sim.churn import MODELS
from tools.sim.clock import SIM_EPOCH, virtual_time
from tools.sim.daemonsim import DaemonSim
from tools.sim.dhtsim import BOOTSTRAP_NODES, DHT_PORT, PRESENCE_REFRESH_S, DhtSim, DhtWorkload
from tools.sim.net import UDP_OVERHEAD, SimNet
from tools.sim.rand import seeded_random
from tools.sim.vloop import VirtualTimeLoop
from tools.sim.world import DEFAULT_LOSS, World

CHURN_MODELS = tuple(MODELS)
USERS_AS = ("records", "daemons")
#: the in-process test networks' id puzzle (tests/helpers/netutil.TEST_ID_PUZZLE_BITS): the
#: production 16 bits cost ~1 s of key grinding per node
SIM_ID_PUZZLE_BITS = 4


@dataclass(frozen=True)
class Params:
    supernodes: int
    users: int
    hours: float
    churn: str
    seed: int
    json: str | None = None
    plots: str | None = None
    loss: float = DEFAULT_LOSS
    id_puzzle_bits: int = SIM_ID_PUZZLE_BITS
    join_window_s: float = 600.0
    lookups_per_user_h: float = 1.0
    presence_refresh_s: float = PRESENCE_REFRESH_S
    #: a progress line on stderr every this many simulated seconds (0: none)
    progress_s: float = 0.0
    #: "records": users are presence records their supernode publishes (DhtSim);
    #: "daemons": real supernode and client daemons (DaemonSim)
    users_as: str = "records"

    def check(self) -> None:
        if self.supernodes < 1 or self.users < 0 or self.hours <= 0:
            raise ValueError("need --supernodes >= 1, --users >= 0, --hours > 0")
        if self.users_as not in USERS_AS:
            raise ValueError(f"--users-as must be one of {', '.join(USERS_AS)}")
        if self.churn not in CHURN_MODELS:
            raise ValueError(f"--churn must be one of {', '.join(CHURN_MODELS)}")


def dht_config(params: Params) -> DHTConfig:
    """Production DHT settings but for the id puzzle (:data:`SIM_ID_PUZZLE_BITS`)."""
    return DHTConfig(id_puzzle_bits=params.id_puzzle_bits)


def simulate(params: Params) -> dict[str, Any]:
    """Run the simulation described by ``params``; the output document."""
    params.check()
    started = time.perf_counter()
    cpu_started = time.process_time()
    logs.configure("error", json=True)
    random.seed(params.seed)  # kademlia's own draws (refresh ids) use the global RNG
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    try:
        net = SimNet(loop, World(params.seed, params.loss))
        net.install()
        config = dht_config(params)
        work = DhtWorkload(
            supernodes=params.supernodes, users=params.users,
            duration_s=params.hours * 3600.0, seed=params.seed, config=config,
            join_window_s=params.join_window_s, lookups_per_user_h=params.lookups_per_user_h,
            presence_refresh_s=params.presence_refresh_s, churn=MODELS[params.churn],
            progress_s=params.progress_s,
        )
        sim = DaemonSim(net, work) if params.users_as == "daemons" else DhtSim(net, work)
        sim.build()
        with virtual_time(loop), seeded_random(params.seed):
            loop.run_until_complete(sim.run())
            values = measure(sim, params, config)
            raw = plots.series(sim) if params.plots else None
            _stop(sim, loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    values["wall_s"] = round(time.perf_counter() - started, 3)
    cpu_s = time.process_time() - cpu_started
    values["peak_rss_mib"] = round(metrics.peak_rss_mib(), 1)
    summary(sim, values, cpu_s)
    if raw is not None and params.plots:
        title = (f"{params.supernodes} supernodes, {params.users} users, {params.hours:g} h, "
                 f"churn {params.churn}, seed {params.seed}, users as {params.users_as}")
        for path in plots.write(raw, Path(params.plots), title):
            print(f"tools.sim: wrote {path}", file=sys.stderr)
    return metrics.document(values)


def _stop(sim: DhtSim, loop: VirtualTimeLoop) -> None:
    for sn in sim.nodes:
        if sn.dht is not None and sn.host.up:
            sn.dht.stop()
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def traffic(sim: DhtSim) -> dict[str, float | None]:
    """Per supernode and second it was up in the measurement window: the mean over all
    supernodes (everything sent / every up-second) and the busiest one's (among those up at
    least a minute of the window)."""
    msgs = up = sent_bytes = 0.0
    msg_max: float | None = None
    byte_max: float | None = None
    for sn in sim.nodes:
        d0, b0 = sim.window_counts.get(sn.index, (sn.host.sent_datagrams, sn.host.sent_bytes))
        d, b = sn.host.sent_datagrams - d0, sn.host.sent_bytes - b0
        msgs, sent_bytes, up = msgs + d, sent_bytes + b, up + sn.window_up_s
        if sn.window_up_s >= 60.0:
            msg_max = max(msg_max or 0.0, d / sn.window_up_s)
            byte_max = max(byte_max or 0.0, b / sn.window_up_s)
    return {
        "dht_msgs_per_node_s": metrics.rounded(msgs / up) if up else None,
        "dht_msgs_per_node_s_max": metrics.rounded(msg_max),
        "dht_bytes_per_node_s": metrics.rounded(sent_bytes / up, 1) if up else None,
        "dht_bytes_per_node_s_max": metrics.rounded(byte_max, 1),
    }


def clients(sim: DhtSim) -> dict[str, float | None]:
    """What only real client daemons show: attach time, re-listing after a supernode
    failure, and how evenly clients spread (None with users as records)."""
    if not isinstance(sim, DaemonSim):
        return {"attach_s_p50": None, "relist_s_p99": None, "client_share_max_over_mean": None}
    counts = sim.clients_per_supernode()
    mean = statistics.fmean(counts) if counts else 0.0
    return {
        "attach_s_p50": metrics.rounded(metrics.percentile(sim.attach_s, 50)),
        "relist_s_p99": metrics.rounded(metrics.percentile(sim.relist_s, 99)),
        "client_share_max_over_mean": metrics.rounded(max(counts) / mean) if mean else None,
    }


def measure(sim: DhtSim, params: Params, config: DHTConfig) -> dict[str, Any]:
    lookups = sim.lookups
    ok = [lk for lk in lookups if lk.ok]
    seconds = [lk.seconds for lk in ok]
    hops = [float(lk.hops) for lk in ok if lk.hops is not None]
    per_key = [len(slots) for sn in sim.nodes if sn.dht is not None and sn.host.up
               for slots in sn.dht.storage.data.values()]
    return {
        "lookup_success": metrics.rounded(len(ok) / len(lookups)) if lookups else None,
        "lookup_p50_s": metrics.rounded(metrics.percentile(seconds, 50)),
        "lookup_p99_s": metrics.rounded(metrics.percentile(seconds, 99)),
        "lookup_hops_p50": statistics.median(hops) if hops else None,
        **clients(sim),
        **traffic(sim),
        "max_records_per_key": max(per_key, default=0),
        "params": {
            **dataclasses.asdict(params),
            "simulated_s": sim.work.duration_s,
            "measurement_window_s": [sim.warmup_end, sim.work.duration_s],
            **users_note(sim),
            "churn_model": dataclasses.asdict(sim.work.churn),
            "bootstrap_nodes": BOOTSTRAP_NODES,
            "dht_port": DHT_PORT,
            "dht_config": dataclasses.asdict(config),
            "udp_overhead_bytes": UDP_OVERHEAD,
            "sim_epoch": SIM_EPOCH,
        },
    }


def users_note(sim: DhtSim) -> dict[str, Any]:
    if isinstance(sim, DaemonSim):
        return {
            "supernodes_are": "overlay.node.supernode.Supernode daemons (no HTTP API)",
            "users_are": "overlay.client.daemon.ClientDaemon daemons, one host each "
                         "(may_become_supernode=False, port_mapping=False)",
        }
    return {
        "supernodes_are": "overlay.dht.DHTNode only (no TCP service, no clients)",
        "users_are": "presence records published by their supernode (DHTNode.put) every "
                     "presence_refresh_s, looked up with DHTNode.get",
        "user_placement": "uniform over live supernodes (no attach policy); re-attach "
                          "rehome_s after the supernode fails",
        "rehome_s": sim.work.rehome_s,
    }


def summary(sim: DhtSim, values: dict[str, Any], cpu_s: float) -> None:
    """A few lines for people on stderr (the JSON is the result)."""
    net = sim.net
    joined = [sn for sn in sim.nodes if sn.joined]
    table = statistics.fmean(sn.dht.routing_table_size for sn in joined
                             if sn.dht is not None) if joined else 0
    print(
        f"sim: {len(sim.nodes)} supernodes ({len(joined)} joined, mean table {table:.1f}), "
        f"{len(sim.users)} users, {sim.work.duration_s:g} s simulated in "
        f"{values['wall_s']:g} s wall ({cpu_s:.1f} s CPU), {loop_jumps(sim)} clock jumps, "
        f"peak RSS {values['peak_rss_mib']:g} MiB\n"
        f"sim: {len(sim.lookups)} lookups, success {values['lookup_success']}, "
        f"p50 {values['lookup_p50_s']} s, p99 {values['lookup_p99_s']} s, "
        f"hops p50 {values['lookup_hops_p50']}; publish failures {sim.publish_failures}; "
        f"mass-failed supernodes {sim.mass_failed}; "
        f"datagrams lost {net.datagrams_lost}, undeliverable {net.datagrams_undeliverable}; "
        f"per node {values['dht_msgs_per_node_s']} msg/s "
        f"(max {values['dht_msgs_per_node_s_max']})",
        file=sys.stderr,
    )


def loop_jumps(sim: DhtSim) -> int:
    loop = sim.net.loop
    return loop.jumps if isinstance(loop, VirtualTimeLoop) else 0
